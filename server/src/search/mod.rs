//! Search: what text becomes terms ([`text`]), the query language
//! ([`query`]), and the per-account inverted index in the store
//! ([`index`]), written in the same transaction as the mail. Evaluating a
//! query against mail (filters, order, snippets) is `mail::find`.

pub mod index;
pub mod query;
pub mod text;

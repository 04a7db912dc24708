//! The change log never drops a change: from every state it still serves,
//! replaying `changes` of each kind reproduces the final state exactly, and
//! older states get `cannotCalculateChanges` — with transactions far larger
//! than one compaction step, and while writers are active.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use proptest::prelude::*;
use quail_server::account::AccountId;
use quail_server::error::Error;
use quail_server::store::{Db, FjallStore, Ticket};
use quail_server::sync::{self, ChangeSet, KINDS, Kind, Op, State};

/// What exists, per kind, and when each id last changed.
#[derive(Debug, Clone, Default)]
struct Model {
    live: BTreeMap<u8, BTreeSet<u64>>,
    changed_at: BTreeMap<(u8, u64), u64>,
    next_id: u64,
}

/// One transaction: per kind, how many ids to create, update and destroy.
#[derive(Debug, Clone)]
struct Tx {
    kinds: Vec<(Kind, usize, usize, usize)>,
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![Just(Kind::Email), Just(Kind::Mailbox), Just(Kind::Thread)]
}

fn tx() -> impl Strategy<Value = Tx> {
    let small = (kind(), 0usize..6, 0usize..6, 0usize..4);
    let big = (Just(Kind::Email), 1000usize..3001, 0usize..3, 0usize..3);
    prop_oneof![
        8 => prop::collection::vec(small, 1..4).prop_map(|kinds| Tx { kinds }),
        1 => (big, prop::collection::vec((kind(), 0usize..4, 0usize..4, 0usize..2), 0..3))
            .prop_map(|(b, mut rest)| {
                rest.insert(0, b);
                Tx { kinds: rest }
            }),
    ]
}

const ACCOUNT: AccountId = AccountId(7);

/// Applies `t` to the store and the model; returns the new state and the
/// ticket to sync.
fn commit(db: &Db, model: &mut Model, t: &Tx, keep: u64, pick: &mut u64) -> (State, Ticket) {
    let mut plan = Vec::new();
    for (kind, create, update, destroy) in &t.kinds {
        let k = *kind as u8;
        for _ in 0..*create {
            model.next_id += 1;
            plan.push((*kind, model.next_id, Op::Created));
        }
        let existing: Vec<u64> = model.live.get(&k).map(|s| s.iter().copied().collect()).unwrap_or_default();
        for n in 0..(*update + *destroy) {
            if existing.is_empty() {
                break;
            }
            *pick = pick.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let id = existing[(*pick >> 33) as usize % existing.len()];
            plan.push((*kind, id, if n < *update { Op::Updated } else { Op::Destroyed }));
        }
    }
    let (state, ticket) = db
        .write(|txn| {
            let mut set = ChangeSet::new();
            for (kind, id, op) in &plan {
                set.note(*kind, *id, *op);
            }
            set.commit(txn, ACCOUNT, keep)
        })
        .expect("commit");
    for (kind, id, op) in &plan {
        let k = *kind as u8;
        let live = model.live.entry(k).or_default();
        match op {
            Op::Created => {
                live.insert(*id);
            }
            Op::Updated => {}
            Op::Destroyed => {
                live.remove(id);
            }
        }
        model.changed_at.insert((k, *id), state.0);
    }
    (state, ticket)
}

fn apply(db: &Db, model: &mut Model, t: &Tx, keep: u64, pick: &mut u64) -> State {
    let (state, ticket) = commit(db, model, t, keep, pick);
    db.store().sync_blocking(ticket).expect("sync");
    state
}

/// Replays every page of `changes(kind, since)`; `None` when the log can
/// no longer answer from `since`. With writers active (`concurrent`), the
/// log may be compacted past the replay between two pages: then the client
/// resyncs, which is correct.
fn replay(
    db: &Db,
    kind: Kind,
    since: State,
    start: &BTreeSet<u64>,
    concurrent: bool,
) -> Option<(State, BTreeSet<u64>, BTreeSet<u64>)> {
    let mut live = start.clone();
    let mut touched = BTreeSet::new();
    let mut at = since;
    loop {
        match sync::changes(db, ACCOUNT, kind, at, 97) {
            Ok(c) => {
                assert!(c.new_state >= at, "changes went backwards");
                for id in &c.created {
                    live.insert(*id);
                    touched.insert(*id);
                }
                for id in &c.updated {
                    assert!(live.contains(id), "{kind:?} {id} updated but not known at {}", at.0);
                    touched.insert(*id);
                }
                for id in &c.destroyed {
                    live.remove(id);
                }
                at = c.new_state;
                if !c.has_more {
                    return Some((at, live, touched));
                }
            }
            Err(Error::CannotCalculateChanges(_)) => {
                assert!(concurrent || at == since, "the log failed in the middle of a replay");
                return None;
            }
            Err(e) => panic!("changes failed: {e}"),
        }
    }
}

fn check_all(db: &Db, history: &[(State, Model)], last: &Model, current: State, keep: u64) {
    for (s, m) in history {
        for kind in KINDS {
            let k = kind as u8;
            let start = m.live.get(&k).cloned().unwrap_or_default();
            match replay(db, kind, *s, &start, false) {
                Some((end, live, touched)) => {
                    assert_eq!(end, current, "{kind:?} from {}", s.0);
                    let want = last.live.get(&k).cloned().unwrap_or_default();
                    assert_eq!(live, want, "{kind:?} replayed from state {}", s.0);
                    // Every id still there that changed after `s` was reported.
                    for ((kk, id), at) in &last.changed_at {
                        if *kk == k && *at > s.0 && want.contains(id) {
                            assert!(
                                touched.contains(id),
                                "{kind:?} {id} changed at {at}, missed from {}",
                                s.0
                            );
                        }
                    }
                }
                None => assert!(
                    s.0 + keep < current.0,
                    "{kind:?}: state {} is within the horizon ({} kept of {}) but refused",
                    s.0,
                    keep,
                    current.0
                ),
            }
        }
    }
}

fn open() -> (tempfile::TempDir, Db) {
    let dir = tempfile::tempdir().expect("dir");
    let db = Db::new(Arc::new(FjallStore::open(dir.path()).expect("open")));
    (dir, db)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]
    #[test]
    fn replay_from_any_served_state_reproduces_the_final_state(
        txs in prop::collection::vec(tx(), 1..40),
        keep in prop_oneof![Just(50u64), Just(300), Just(2000)],
    ) {
        let (_dir, db) = open();
        let mut model = Model::default();
        let mut history = vec![(State(0), model.clone())];
        let mut pick = 1;
        let mut current = State(0);
        for t in &txs {
            current = apply(&db, &mut model, t, keep, &mut pick);
            history.push((current, model.clone()));
        }
        check_all(&db, &history, &model, current, keep);
    }
}

/// The same checks while a writer commits: every answer is one consistent
/// cut, so a replay lands exactly on a state the writer produced.
#[test]
fn replays_stay_exact_while_a_writer_commits() {
    let (_dir, db) = open();
    let keep = 200;
    let models: Arc<Mutex<BTreeMap<u64, Model>>> = Arc::new(Mutex::new(BTreeMap::new()));
    models.lock().expect("lock").insert(0, Model::default());
    let writer = {
        let (db, models) = (db.clone(), Arc::clone(&models));
        std::thread::spawn(move || {
            let mut model = Model::default();
            let mut pick = 11;
            for i in 0..300u64 {
                let t = if i % 50 == 7 {
                    Tx { kinds: vec![(Kind::Email, 1000, 2, 2), (Kind::Mailbox, 1, 1, 0)] }
                } else {
                    Tx {
                        kinds: vec![
                            (Kind::Email, 3, 2, 1),
                            (Kind::Mailbox, 1, 1, 0),
                            (Kind::Thread, 2, 1, 1),
                        ],
                    }
                };
                // The model is recorded before the commit is durable (and
                // so visible), so no reader can see the state first.
                let (state, ticket) = commit(&db, &mut model, &t, keep, &mut pick);
                models.lock().expect("lock").insert(state.0, model.clone());
                db.store().sync_blocking(ticket).expect("sync");
            }
        })
    };
    let mut replays = 0;
    while !writer.is_finished() || replays == 0 {
        let snapshot: Vec<(u64, Model)> =
            models.lock().expect("lock").iter().rev().take(20).map(|(s, m)| (*s, m.clone())).collect();
        for (s, m) in snapshot {
            for kind in KINDS {
                let k = kind as u8;
                let start = m.live.get(&k).cloned().unwrap_or_default();
                if let Some((end, live, _)) = replay(&db, kind, State(s), &start, true) {
                    // The writer records a state right after its commit
                    // returns; the fsync that publishes it may come first.
                    let mut at_end = None;
                    for _ in 0..1000 {
                        at_end = models.lock().expect("lock").get(&end.0).cloned();
                        if at_end.is_some() {
                            break;
                        }
                        std::thread::sleep(std::time::Duration::from_millis(1));
                    }
                    let at_end = at_end
                        .unwrap_or_else(|| panic!("replay ended at {}, a state no writer produced", end.0));
                    assert_eq!(
                        live,
                        at_end.live.get(&k).cloned().unwrap_or_default(),
                        "{kind:?} {s} -> {}",
                        end.0
                    );
                    replays += 1;
                }
            }
        }
    }
    writer.join().expect("writer");
    assert!(replays > 0);
}

//! Messages carrying EICAR, in every form the anti-virus tests use.

#![allow(dead_code)]

use std::io::Write;

use base64::Engine;
use quail_server::filter::virus::EICAR;

pub fn b64(data: &[u8]) -> String {
    let s = base64::engine::general_purpose::STANDARD.encode(data);
    s.as_bytes().chunks(76).map(|l| String::from_utf8_lossy(l).into_owned() + "\r\n").collect()
}

pub fn zip_of(name: &str, data: &[u8], method: zip::CompressionMethod) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    w.start_file(name, zip::write::SimpleFileOptions::default().compression_method(method)).expect("entry");
    w.write_all(data).expect("write");
    w.finish().expect("finish").into_inner()
}

/// A message with one attachment: `headers` are the part's headers.
pub fn with_part(boundary_param: &str, boundary: &str, headers: &str, body: &str) -> Vec<u8> {
    format!(
        "From: mallory@example.net\r\nTo: alice@example.org\r\nSubject: for you\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary={boundary_param}\r\n\r\n--{boundary}\r\n\
         Content-Type: text/plain\r\n\r\nsee attached\r\n--{boundary}\r\n{headers}\r\n\r\n{body}\r\n--{boundary}--\r\n"
    )
    .into_bytes()
}

pub fn attachment(name: &str, data: &[u8]) -> Vec<u8> {
    with_part(
        "\"b\"",
        "b",
        &format!(
            "Content-Type: application/octet-stream; name=\"{name}\"\r\nContent-Transfer-Encoding: base64\r\n\
             Content-Disposition: attachment; filename=\"{name}\""
        ),
        &b64(data),
    )
}

/// EICAR in every form the issue names, each a whole message.
pub fn eicar_forms() -> Vec<(&'static str, Vec<u8>)> {
    let eicar = std::str::from_utf8(EICAR).expect("ascii");
    let zipped = zip_of("eicar.com", EICAR, zip::CompressionMethod::Deflated);
    let zip_in_zip = zip_of("inner.zip", &zipped, zip::CompressionMethod::Deflated);
    // Quoted-printable with a soft line break in the middle of the string.
    let qp = format!("{}=\r\n{}", &eicar[..30], &eicar[30..]).replace("=", "=3D").replace("=3D\r\n", "=\r\n");
    let inner = String::from_utf8(attachment("eicar.bin", EICAR)).expect("utf8");
    vec![
        ("as the body", format!("From: m@example.net\r\nSubject: hi\r\n\r\n{eicar}\r\n").into_bytes()),
        ("as a base64 attachment", attachment("eicar.bin", EICAR)),
        (
            "as a quoted-printable attachment",
            with_part(
                "\"b\"",
                "b",
                "Content-Type: text/plain; name=\"e.txt\"\r\nContent-Transfer-Encoding: quoted-printable",
                &qp,
            ),
        ),
        (
            "base64 body of a single-part message",
            format!(
                "From: m@example.net\r\nSubject: hi\r\nMIME-Version: 1.0\r\nContent-Type: application/octet-stream\r\n\
                 Content-Transfer-Encoding: base64\r\n\r\n{}",
                b64(EICAR)
            )
            .into_bytes(),
        ),
        ("zipped", attachment("eicar.zip", &zipped)),
        ("zip in zip", attachment("nested.zip", &zip_in_zip)),
        (
            "under an RFC 2231-encoded name",
            with_part(
                "\"b\"",
                "b",
                "Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\
                 Content-Disposition: attachment;\r\n filename*0*=utf-8''%E2%9C%93%20rep;\r\n filename*1*=ort.bin",
                &b64(EICAR),
            ),
        ),
        (
            "behind a boundary with spaces",
            with_part(
                "\"a boundary with spaces\"",
                "a boundary with spaces",
                "Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64",
                &b64(EICAR),
            ),
        ),
        (
            "behind a boundary with quotes and odd characters",
            with_part(
                "\"=_q'(x)+,-./:=?\"",
                "=_q'(x)+,-./:=?",
                "Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64",
                &b64(EICAR),
            ),
        ),
        (
            "inside message/rfc822",
            with_part("\"outer\"", "outer", "Content-Type: message/rfc822", &inner),
        ),
        (
            "inside a base64 message/global",
            with_part(
                "\"outer\"",
                "outer",
                "Content-Type: message/global\r\nContent-Transfer-Encoding: base64",
                &b64(inner.as_bytes()),
            ),
        ),
        (
            "after a folded Content-Transfer-Encoding",
            with_part(
                "\"b\"",
                "b",
                "Content-Type: application/octet-stream;\r\n name=\"x.bin\"\r\nContent-Transfer-Encoding:\r\n\tbase64",
                &b64(EICAR),
            ),
        ),
    ]
}

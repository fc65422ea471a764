//! A scripted fake walsender on 127.0.0.1: each test plays the server side of one
//! conversation byte for byte, covering protocol edge cases a real server rarely shows
//! (split messages, cancelled reads, timeline ends, authentication variants, errors).

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use ring::{digest, hmac, pbkdf2};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use tidemark_protocol::{
    parse_history, ConnInfo, Lsn, ReplicationClient, ReplicationError, StartOutcome, StreamMessage,
    TimelineId,
};

const SSL_REQUEST_CODE: i32 = 80877103;
const PROTOCOL_3_0: i32 = 196608;

/// The server end of one connection.
struct Peer {
    stream: TcpStream,
    buf: BytesMut,
}

impl Peer {
    async fn fill(&mut self, n: usize) {
        while self.buf.len() < n {
            let read = self.stream.read_buf(&mut self.buf).await.unwrap();
            assert!(read > 0, "client closed the connection early");
        }
    }

    /// The untagged startup packet; answers SSLRequest with `ssl_answer` first.
    async fn read_startup(&mut self, ssl_answer: u8) -> HashMap<String, String> {
        loop {
            self.fill(4).await;
            let len = (&self.buf[..4]).get_i32() as usize;
            self.fill(len).await;
            let mut packet = self.buf.split_to(len);
            packet.advance(4);
            let code = packet.get_i32();
            if code == SSL_REQUEST_CODE {
                self.stream.write_all(&[ssl_answer]).await.unwrap();
                continue;
            }
            assert_eq!(code, PROTOCOL_3_0);
            let fields: Vec<String> = packet[..]
                .split(|b| *b == 0)
                .map(|s| String::from_utf8(s.to_vec()).unwrap())
                .collect();
            return fields
                .chunks(2)
                .filter(|kv| kv.len() == 2 && !kv[0].is_empty())
                .map(|kv| (kv[0].clone(), kv[1].clone()))
                .collect();
        }
    }

    /// One tagged frontend message.
    async fn read(&mut self) -> (u8, Bytes) {
        self.fill(5).await;
        let tag = self.buf[0];
        let len = (&self.buf[1..5]).get_i32() as usize;
        self.fill(len + 1).await;
        let mut msg = self.buf.split_to(len + 1);
        msg.advance(5);
        (tag, msg.freeze())
    }

    /// A simple query's text.
    async fn read_query(&mut self) -> String {
        let (tag, body) = self.read().await;
        assert_eq!(tag, b'Q');
        String::from_utf8(body[..body.len() - 1].to_vec()).unwrap()
    }

    async fn send(&mut self, tag: u8, body: &[u8]) {
        self.stream.write_all(&frame(tag, body)).await.unwrap();
    }

    async fn auth_request(&mut self, code: i32, extra: &[u8]) {
        let mut body = code.to_be_bytes().to_vec();
        body.extend_from_slice(extra);
        self.send(b'R', &body).await;
    }

    /// AuthenticationOk, parameters, BackendKeyData, ReadyForQuery.
    async fn finish_startup(&mut self) {
        self.auth_request(0, b"").await;
        self.send(
            b'S',
            b"server_version\x0015.18 (Debian 15.18-1.pgdg120+1)\x00",
        )
        .await;
        self.send(b'S', b"integer_datetimes\x00on\x00").await;
        self.send(b'K', &[0, 0, 0, 42, 0, 0, 0, 7]).await;
        self.ready().await;
    }

    /// Trust authentication: startup, then straight to ready.
    async fn accept_trust(&mut self) -> HashMap<String, String> {
        let params = self.read_startup(b'N').await;
        self.finish_startup().await;
        params
    }

    async fn ready(&mut self) {
        self.send(b'Z', b"I").await;
    }

    async fn error(&mut self, severity: &str, code: &str, message: &str) {
        let body = format!("S{severity}\0V{severity}\0C{code}\0M{message}\0\0");
        self.send(b'E', body.as_bytes()).await;
    }

    /// RowDescription + DataRows + CommandComplete + ReadyForQuery (text columns).
    async fn result_set(&mut self, columns: &[&str], rows: &[&[Option<&[u8]>]], tag: &str) {
        let mut desc = BytesMut::new();
        desc.put_i16(columns.len() as i16);
        for c in columns {
            desc.put_slice(c.as_bytes());
            desc.put_u8(0);
            desc.put_i32(0);
            desc.put_i16(0);
            desc.put_u32(25);
            desc.put_i16(-1);
            desc.put_i32(-1);
            desc.put_i16(0);
        }
        self.send(b'T', &desc).await;
        for row in rows {
            let mut data = BytesMut::new();
            data.put_i16(row.len() as i16);
            for value in *row {
                match value {
                    None => data.put_i32(-1),
                    Some(v) => {
                        data.put_i32(v.len() as i32);
                        data.put_slice(v);
                    }
                }
            }
            self.send(b'D', &data).await;
        }
        self.send(b'C', format!("{tag}\0").as_bytes()).await;
        self.ready().await;
    }

    async fn copy_both(&mut self) {
        self.send(b'W', &[0, 0, 0]).await;
    }

    async fn copy_data(&mut self, payload: &[u8]) {
        self.send(b'd', payload).await;
    }
}

fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn xlogdata(start: u64, end: u64, time: i64, data: &[u8]) -> Vec<u8> {
    let mut m = vec![b'w'];
    m.extend_from_slice(&start.to_be_bytes());
    m.extend_from_slice(&end.to_be_bytes());
    m.extend_from_slice(&time.to_be_bytes());
    m.extend_from_slice(data);
    m
}

fn keepalive(end: u64, time: i64, reply: bool) -> Vec<u8> {
    let mut m = vec![b'k'];
    m.extend_from_slice(&end.to_be_bytes());
    m.extend_from_slice(&time.to_be_bytes());
    m.push(u8::from(reply));
    m
}

/// Start a one-connection fake server running `script`; returns the client's ConnInfo
/// (trailing settings appended) and the server task.
async fn fake_server<F, Fut>(settings: &str, script: F) -> (ConnInfo, tokio::task::JoinHandle<()>)
where
    F: FnOnce(Peer) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        stream.set_nodelay(true).unwrap();
        script(Peer {
            stream,
            buf: BytesMut::new(),
        })
        .await;
    });
    let info = ConnInfo::parse_with_env(
        &format!("host=127.0.0.1 port={port} user=archiver application_name=tm-test connect_timeout=5 {settings}"),
        &|var| (var == "HOME").then(|| "/nonexistent".to_string()),
    )
    .unwrap();
    (info, task)
}

fn lsn(s: &str) -> Lsn {
    s.parse().unwrap()
}

#[tokio::test]
async fn md5_auth_then_identify_system() {
    let (info, server) = fake_server("password=s3cret sslmode=disable", |mut peer| async move {
        let params = peer.read_startup(b'N').await;
        assert_eq!(params["user"], "archiver");
        assert_eq!(params["replication"], "true");
        assert_eq!(params["application_name"], "tm-test");
        let salt = [1, 2, 3, 4];
        peer.auth_request(5, &salt).await;
        let (tag, body) = peer.read().await;
        assert_eq!(tag, b'p');
        let expected = postgres_protocol::authentication::md5_hash(b"archiver", b"s3cret", salt);
        assert_eq!(&body[..body.len() - 1], expected.as_bytes());
        peer.finish_startup().await;

        assert_eq!(peer.read_query().await, "IDENTIFY_SYSTEM");
        peer.result_set(
            &["systemid", "timeline", "xlogpos", "dbname"],
            &[&[
                Some(b"7301234567890123456"),
                Some(b"3"),
                Some(b"16/B374D848"),
                None,
            ]],
            "IDENTIFY_SYSTEM",
        )
        .await;
        assert_eq!(peer.read_query().await, "SHOW wal_segment_size");
        peer.result_set(&["wal_segment_size"], &[&[Some(b"1MB")]], "SHOW")
            .await;
        let (tag, _) = peer.read().await;
        assert_eq!(tag, b'X', "client should terminate politely");
    })
    .await;
    let mut client = ReplicationClient::connect(&info).await.unwrap();
    assert_eq!(client.server_version_num(), 150018);
    let id = client.identify_system().await.unwrap();
    assert_eq!(id.system_id, 7301234567890123456);
    assert_eq!(id.timeline, TimelineId(3));
    assert_eq!(id.xlogpos, lsn("16/B374D848"));
    assert_eq!(client.wal_segment_size().await.unwrap().bytes(), 1 << 20);
    client.close().await.unwrap();
    server.await.unwrap();
}

/// Server side of SCRAM-SHA-256 (RFC 5802 / 7677) for `password`; `tamper` makes the
/// server's final signature wrong.
async fn scram_server(peer: &mut Peer, password: &str, tamper: bool) -> bool {
    peer.auth_request(10, b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0")
        .await;
    let (tag, body) = peer.read().await;
    assert_eq!(tag, b'p');
    let mech_end = body.iter().position(|b| *b == 0).unwrap();
    assert_eq!(
        &body[..mech_end],
        b"SCRAM-SHA-256",
        "plain SCRAM must be chosen"
    );
    let client_first = std::str::from_utf8(&body[mech_end + 5..])
        .unwrap()
        .to_string();
    // No channel binding, and the client must not claim it thinks we lack it.
    let bare = client_first
        .strip_prefix("n,,")
        .expect("gs2 header n,,")
        .to_string();
    let client_nonce = bare.split(",r=").nth(1).unwrap().to_string();
    let nonce = format!("{client_nonce}fakeserver");
    let salt = b"0123456789abcdef";
    let iterations = 4096u32;
    let server_first = format!("r={nonce},s={},i={iterations}", B64.encode(salt));
    peer.auth_request(11, server_first.as_bytes()).await;

    let (tag, body) = peer.read().await;
    assert_eq!(tag, b'p');
    let client_final = std::str::from_utf8(&body).unwrap();
    let (without_proof, proof) = client_final.rsplit_once(",p=").unwrap();
    assert_eq!(without_proof, format!("c=biws,r={nonce}"));
    let proof = B64.decode(proof).unwrap();

    let mut salted = [0u8; 32];
    pbkdf2::derive(
        pbkdf2::PBKDF2_HMAC_SHA256,
        std::num::NonZeroU32::new(iterations).unwrap(),
        salt,
        password.as_bytes(),
        &mut salted,
    );
    let salted_key = hmac::Key::new(hmac::HMAC_SHA256, &salted);
    let client_key = hmac::sign(&salted_key, b"Client Key");
    let stored_key = digest::digest(&digest::SHA256, client_key.as_ref());
    let auth_message = format!("{bare},{server_first},{without_proof}");
    let client_signature = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, stored_key.as_ref()),
        auth_message.as_bytes(),
    );
    let recovered: Vec<u8> = proof
        .iter()
        .zip(client_signature.as_ref())
        .map(|(a, b)| a ^ b)
        .collect();
    if digest::digest(&digest::SHA256, &recovered).as_ref() != stored_key.as_ref() {
        peer.error(
            "FATAL",
            "28P01",
            "password authentication failed for user \"archiver\"",
        )
        .await;
        return false;
    }
    let server_key = hmac::sign(&salted_key, b"Server Key");
    let mut server_signature = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, server_key.as_ref()),
        auth_message.as_bytes(),
    )
    .as_ref()
    .to_vec();
    if tamper {
        server_signature[0] ^= 1;
    }
    peer.auth_request(12, format!("v={}", B64.encode(server_signature)).as_bytes())
        .await;
    true
}

#[tokio::test]
async fn scram_sha_256_auth() {
    let (info, server) = fake_server("password=pässword sslmode=prefer", |mut peer| async move {
        peer.read_startup(b'N').await;
        assert!(scram_server(&mut peer, "pässword", false).await);
        peer.finish_startup().await;
        assert_eq!(peer.read_query().await, "SHOW data_directory");
        peer.result_set(&["data_directory"], &[&[Some(b"/pg/data")]], "SHOW")
            .await;
    })
    .await;
    let mut client = ReplicationClient::connect(&info).await.unwrap();
    assert_eq!(client.show("data_directory").await.unwrap(), "/pg/data");
    server.await.unwrap();
}

#[tokio::test]
async fn scram_wrong_password_is_an_auth_failure() {
    let (info, server) = fake_server("password=wrong sslmode=disable", |mut peer| async move {
        peer.read_startup(b'N').await;
        assert!(!scram_server(&mut peer, "right", false).await);
    })
    .await;
    let err = ReplicationClient::connect(&info).await.err().unwrap();
    assert!(err.is_auth_failure(), "{err}");
    assert_eq!(err.sqlstate(), Some("28P01"));
    assert!(
        err.to_string().contains("password authentication failed"),
        "{err}"
    );
    server.await.unwrap();
}

#[tokio::test]
async fn scram_server_without_the_password_is_rejected() {
    let (info, server) = fake_server("password=pw sslmode=disable", |mut peer| async move {
        peer.read_startup(b'N').await;
        assert!(scram_server(&mut peer, "pw", true).await);
    })
    .await;
    let err = ReplicationClient::connect(&info).await.err().unwrap();
    assert!(matches!(err, ReplicationError::Auth { .. }), "{err}");
    assert!(err.is_auth_failure());
    server.await.unwrap();
}

#[tokio::test]
async fn cleartext_password_and_server_error_28p01() {
    let (info, server) = fake_server("password=pw sslmode=disable", |mut peer| async move {
        peer.read_startup(b'N').await;
        peer.auth_request(3, b"").await;
        let (tag, body) = peer.read().await;
        assert_eq!((tag, &body[..]), (b'p', &b"pw\0"[..]));
        peer.error(
            "FATAL",
            "28P01",
            "password authentication failed for user \"archiver\"",
        )
        .await;
    })
    .await;
    let err = ReplicationClient::connect(&info).await.err().unwrap();
    assert!(
        err.is_auth_failure() && !err.is_replication_denied(),
        "{err}"
    );
    let server_err = err.server_error().unwrap();
    assert_eq!(server_err.severity, "FATAL");
    assert_eq!(
        server_err.message,
        "password authentication failed for user \"archiver\""
    );
    server.await.unwrap();
}

#[tokio::test]
async fn missing_password_is_reported_before_sending_anything() {
    let (info, server) = fake_server("sslmode=disable", |mut peer| async move {
        peer.read_startup(b'N').await;
        peer.auth_request(3, b"").await;
        let mut rest = Vec::new();
        peer.stream.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "no password message expected");
    })
    .await;
    let err = ReplicationClient::connect(&info).await.err().unwrap();
    assert!(matches!(err, ReplicationError::Auth { .. }), "{err}");
    assert!(err.to_string().contains("PGPASSWORD"), "{err}");
    server.await.unwrap();
}

#[tokio::test]
async fn missing_replication_privilege() {
    let (info, server) = fake_server("sslmode=disable", |mut peer| async move {
        peer.read_startup(b'N').await;
        peer.error("FATAL", "42501", "permission denied to start WAL sender")
            .await;
    })
    .await;
    let err = ReplicationClient::connect(&info).await.err().unwrap();
    assert!(
        err.is_replication_denied() && !err.is_auth_failure(),
        "{err}"
    );
    server.await.unwrap();
}

#[tokio::test]
async fn tls_required_but_refused() {
    let (info, server) = fake_server("sslmode=require", |mut peer| async move {
        peer.fill(8).await;
        assert_eq!((&peer.buf[4..8]).get_i32(), SSL_REQUEST_CODE);
        peer.stream.write_all(b"N").await.unwrap();
    })
    .await;
    let err = ReplicationClient::connect(&info).await.err().unwrap();
    assert!(matches!(err, ReplicationError::Tls { .. }), "{err}");
    server.await.unwrap();
}

#[tokio::test]
async fn connection_refused_names_the_target() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let info: ConnInfo = format!("host=127.0.0.1 port={port} user=u sslmode=disable")
        .parse()
        .unwrap();
    let err = ReplicationClient::connect(&info).await.err().unwrap();
    assert!(matches!(err, ReplicationError::Connect { .. }), "{err}");
    assert!(
        err.to_string().contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
    assert!(err.is_connection_failure());
}

#[tokio::test]
async fn connect_timeout_is_honoured() {
    let (mut info, server) = fake_server("sslmode=disable", |mut peer| async move {
        peer.read_startup(b'N').await;
        tokio::time::sleep(Duration::from_secs(3)).await;
    })
    .await;
    info.connect_timeout = Some(Duration::from_millis(200));
    let started = std::time::Instant::now();
    let err = ReplicationClient::connect(&info).await.err().unwrap();
    assert!(
        matches!(err, ReplicationError::ConnectTimeout { .. }),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    server.abort();
}

#[tokio::test]
async fn slot_commands() {
    let (info, server) = fake_server("sslmode=disable", |mut peer| async move {
        peer.accept_trust().await;
        assert_eq!(
            peer.read_query().await,
            "CREATE_REPLICATION_SLOT tm_slot PHYSICAL (RESERVE_WAL)"
        );
        peer.result_set(
            &[
                "slot_name",
                "consistent_point",
                "snapshot_name",
                "output_plugin",
            ],
            &[&[Some(b"tm_slot"), Some(b"0/0"), None, None]],
            "CREATE_REPLICATION_SLOT",
        )
        .await;
        peer.read_query().await;
        peer.error(
            "ERROR",
            "42710",
            "replication slot \"tm_slot\" already exists",
        )
        .await;
        peer.ready().await;
        assert_eq!(peer.read_query().await, "READ_REPLICATION_SLOT tm_slot");
        peer.result_set(
            &["slot_type", "restart_lsn", "restart_tli"],
            &[&[Some(b"physical"), Some(b"0/1000028"), Some(b"1")]],
            "READ_REPLICATION_SLOT",
        )
        .await;
        assert_eq!(peer.read_query().await, "READ_REPLICATION_SLOT nope");
        peer.result_set(
            &["slot_type", "restart_lsn", "restart_tli"],
            &[&[None, None, None]],
            "READ_REPLICATION_SLOT",
        )
        .await;
        peer.read_query().await;
        peer.error("ERROR", "42501", "permission denied").await;
        peer.ready().await;
    })
    .await;
    let mut client = ReplicationClient::connect(&info).await.unwrap();
    assert!(client.create_physical_slot("tm_slot").await.unwrap());
    assert!(!client.create_physical_slot("tm_slot").await.unwrap());
    let slot = client
        .read_replication_slot("tm_slot")
        .await
        .unwrap()
        .unwrap();
    assert!(slot.physical);
    assert_eq!(slot.restart_lsn, Some(lsn("0/1000028")));
    assert_eq!(slot.restart_timeline, Some(TimelineId(1)));
    assert_eq!(client.read_replication_slot("nope").await.unwrap(), None);
    // Other server errors pass through, and the connection stays usable up to here.
    let err = client.create_physical_slot("other").await.unwrap_err();
    assert_eq!(err.sqlstate(), Some("42501"));
    let err = client.create_physical_slot("Bad-Name").await.unwrap_err();
    assert!(matches!(err, ReplicationError::InvalidName { .. }), "{err}");
    server.await.unwrap();
}

/// XLogData, keepalive with reply request, status update, a message delivered one
/// byte at a time while the reader is cancelled by a timer, then the server ending the
/// timeline with CopyDone and the next-timeline result set.
#[tokio::test]
async fn streaming_split_messages_and_end_of_timeline() {
    let history = b"1\t0/3000A0\tno recovery target specified\n";
    let (info, server) = fake_server("sslmode=disable", move |mut peer| async move {
        peer.accept_trust().await;
        assert_eq!(
            peer.read_query().await,
            "START_REPLICATION SLOT tm PHYSICAL 0/3000000 TIMELINE 1"
        );
        peer.copy_both().await;
        peer.copy_data(&xlogdata(
            0x300_0000,
            0x300_0010,
            1_000_000,
            b"0123456789abcdef",
        ))
        .await;
        peer.copy_data(&keepalive(0x300_0010, 2_000_000, true))
            .await;

        let (tag, body) = peer.read().await;
        assert_eq!((tag, body[0], body.len()), (b'd', b'r', 34));
        let mut status = &body[1..];
        assert_eq!(status.get_u64(), 0x300_0010);
        assert_eq!(status.get_u64(), 0x300_0008);
        assert_eq!(status.get_u64(), 0);
        let client_clock = status.get_i64();
        // Client clock: µs since 2000-01-01, i.e. well after 2020 today.
        assert!(
            client_clock > 20 * 365 * 86_400 * 1_000_000,
            "{client_clock}"
        );
        assert_eq!(status.get_u8(), 0);

        let split = frame(
            b'd',
            &xlogdata(0x300_0010, 0x300_0020, 3_000_000, b"fedcba9876543210"),
        );
        for byte in split {
            peer.stream.write_all(&[byte]).await.unwrap();
            peer.stream.flush().await.unwrap();
            tokio::time::sleep(Duration::from_millis(3)).await;
        }

        peer.send(b'c', b"").await;
        let (tag, _) = peer.read().await;
        assert_eq!(tag, b'c', "client must answer CopyDone");
        peer.send(b'C', b"COPY 0\0").await;
        peer.result_set(
            &["next_tli", "next_tli_startpos"],
            &[&[Some(b"2"), Some(b"0/3000A0")]],
            "START_STREAMING",
        )
        .await;

        assert_eq!(peer.read_query().await, "TIMELINE_HISTORY 2");
        peer.result_set(
            &["filename", "content"],
            &[&[Some(b"00000002.history"), Some(history)]],
            "TIMELINE_HISTORY",
        )
        .await;
    })
    .await;
    let client = ReplicationClient::connect(&info).await.unwrap();
    let StartOutcome::Streaming(mut stream) = client
        .start_replication(Some("tm"), lsn("0/3000000"), TimelineId(1))
        .await
        .unwrap()
    else {
        panic!("expected streaming");
    };
    let StreamMessage::XLogData {
        wal_start,
        server_wal_end,
        server_time,
        data,
    } = stream.next_message().await.unwrap()
    else {
        panic!("expected XLogData");
    };
    assert_eq!(
        (wal_start, server_wal_end),
        (lsn("0/3000000"), lsn("0/3000010"))
    );
    assert_eq!(server_time.to_rfc3339(), "2000-01-01T00:00:01+00:00");
    assert_eq!(&data[..], b"0123456789abcdef");
    assert!(matches!(
        stream.next_message().await.unwrap(),
        StreamMessage::Keepalive { reply_requested: true, server_wal_end, .. } if server_wal_end == lsn("0/3000010")
    ));
    // A client that is not "fresh" as asked: flush lags write.
    stream
        .send_status(lsn("0/3000010"), lsn("0/3000008"), Lsn(0), false)
        .await
        .unwrap();

    let mut timeouts = 0;
    let message = loop {
        tokio::select! {
            m = stream.next_message() => break m.unwrap(),
            _ = tokio::time::sleep(Duration::from_millis(5)) => timeouts += 1,
        }
    };
    assert!(
        timeouts >= 5,
        "the read should have been cancelled repeatedly ({timeouts})"
    );
    assert!(matches!(
        &message,
        StreamMessage::XLogData { wal_start, data, .. }
            if *wal_start == lsn("0/3000010") && &data[..] == b"fedcba9876543210"
    ));

    assert_eq!(
        stream.next_message().await.unwrap(),
        StreamMessage::EndOfTimeline {
            next_timeline: TimelineId(2),
            switch_lsn: lsn("0/3000A0")
        }
    );
    assert!(stream.next_message().await.is_err());
    let mut client = stream.into_client().unwrap();
    let (name, content) = client.timeline_history(TimelineId(2)).await.unwrap();
    assert_eq!(name, "00000002.history");
    let entries = parse_history(&content).unwrap();
    assert_eq!(entries[0].switch_lsn, lsn("0/3000A0"));
    server.await.unwrap();
}

#[tokio::test]
async fn start_at_switch_point_answers_without_copy_mode() {
    let (info, server) = fake_server("sslmode=disable", |mut peer| async move {
        peer.accept_trust().await;
        assert_eq!(
            peer.read_query().await,
            "START_REPLICATION PHYSICAL 0/3000A0 TIMELINE 1"
        );
        peer.result_set(
            &["next_tli", "next_tli_startpos"],
            &[&[Some(b"2"), Some(b"0/3000A0")]],
            "START_STREAMING",
        )
        .await;
        assert_eq!(peer.read_query().await, "IDENTIFY_SYSTEM");
        peer.result_set(
            &["systemid", "timeline", "xlogpos", "dbname"],
            &[&[Some(b"1"), Some(b"2"), Some(b"0/4000000"), None]],
            "IDENTIFY_SYSTEM",
        )
        .await;
    })
    .await;
    let client = ReplicationClient::connect(&info).await.unwrap();
    match client
        .start_replication(None, lsn("0/3000A0"), TimelineId(1))
        .await
        .unwrap()
    {
        StartOutcome::TimelineEnded {
            mut client,
            next_timeline,
            switch_lsn,
        } => {
            assert_eq!(
                (next_timeline, switch_lsn),
                (TimelineId(2), lsn("0/3000A0"))
            );
            assert_eq!(
                client.identify_system().await.unwrap().timeline,
                TimelineId(2)
            );
        }
        StartOutcome::Streaming(_) => panic!("expected the timeline to have ended"),
    }
    server.await.unwrap();
}

#[tokio::test]
async fn start_replication_error_is_returned() {
    let (info, server) = fake_server("sslmode=disable", |mut peer| async move {
        peer.accept_trust().await;
        peer.read_query().await;
        peer.error(
            "ERROR",
            "58P01",
            "requested WAL segment 000000010000000000000001 has already been removed",
        )
        .await;
        peer.ready().await;
    })
    .await;
    let client = ReplicationClient::connect(&info).await.unwrap();
    let err = client
        .start_replication(None, lsn("0/1000000"), TimelineId(1))
        .await
        .err()
        .unwrap();
    assert_eq!(err.sqlstate(), Some("58P01"));
    server.await.unwrap();
}

#[tokio::test]
async fn server_closing_mid_stream_is_reported() {
    let (info, server) = fake_server("sslmode=disable", |mut peer| async move {
        peer.accept_trust().await;
        peer.read_query().await;
        peer.copy_both().await;
        // Half a message, then the connection goes away.
        let msg = frame(b'd', &keepalive(1, 1, false));
        peer.stream.write_all(&msg[..7]).await.unwrap();
    })
    .await;
    let client = ReplicationClient::connect(&info).await.unwrap();
    let StartOutcome::Streaming(mut stream) = client
        .start_replication(None, lsn("0/1000000"), TimelineId(1))
        .await
        .unwrap()
    else {
        panic!("expected streaming");
    };
    server.await.unwrap();
    let err = stream.next_message().await.unwrap_err();
    assert!(matches!(err, ReplicationError::Closed), "{err}");
    assert!(stream.into_client().is_err());
}

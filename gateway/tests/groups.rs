//! End to end: groups on the real server over loopback — create and chat, catch-up of an
//! offline member, membership changes with their permissions and typed errors, removed
//! members, fan-out on read against fan-out on write, and aggregated group receipts.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::people::*;
use common::Server;
use wire::client::http::Login;
use wire::client::{new_key, ClientError, Connection, Transport};
use wire::message::{
    ErrorCode, GroupOp, GroupRole, GroupUpdate, MessageKind, ReceiptKind, ReceiptState,
    StoredMessage,
};

fn server(extra: &[&str]) -> Server {
    let mut args = FAST.to_vec();
    args.extend_from_slice(extra);
    Server::start(&args)
}

fn update(conversation_id: u64, op: GroupOp, user_ids: &[u64]) -> GroupUpdate {
    GroupUpdate {
        conversation_id,
        op,
        name: String::new(),
        user_ids: user_ids.to_vec(),
        role: GroupRole::Member,
    }
}

fn code(result: Result<impl std::fmt::Debug, ClientError>) -> ErrorCode {
    match result {
        Err(ClientError::ServerError(error)) => error.code,
        other => panic!("expected a server error, got {other:?}"),
    }
}

/// `(seq, sender, body)` of messages, to compare what members saw.
fn story(messages: &[StoredMessage]) -> Vec<(u64, u64, Vec<u8>)> {
    messages
        .iter()
        .map(|m| (m.seq, m.sender_user_id, m.body.clone()))
        .collect()
}

/// Delivers until `n` have arrived (skipping other pushes).
fn delivers(conn: &mut Connection, n: usize) -> Vec<StoredMessage> {
    (0..n).map(|_| next_deliver(conn)).collect()
}

#[test]
fn three_members_chat_over_every_transport() {
    let server = server(&[]);
    let (_, a) = user(&server, "ga");
    let (_, b) = user(&server, "gb");
    let (_, c) = user(&server, "gc");
    let (mut ca, _) = online(&server, Transport::WsBinary, &a);
    let (mut cb, _) = online(&server, Transport::WsJson, &b);
    let (mut cc, _) = online(&server, Transport::Tcp, &c);

    let info = ca
        .create_group("trio", &[b.user_id, c.user_id, a.user_id])
        .unwrap();
    let g = info.conversation_id;
    assert_eq!(info.name, "trio");
    assert_eq!(info.created_by, a.user_id);
    let roles: BTreeMap<u64, GroupRole> =
        info.members.iter().map(|m| (m.user_id, m.role)).collect();
    assert_eq!(
        roles,
        BTreeMap::from([
            (a.user_id, GroupRole::Owner),
            (b.user_id, GroupRole::Member),
            (c.user_id, GroupRole::Member)
        ])
    );

    // Everyone sees the creation as the group's first record.
    for conn in [&mut ca, &mut cb, &mut cc] {
        let created = next_deliver(conn);
        assert_eq!(
            (created.conversation_id, created.seq, created.kind),
            (g, 1, MessageKind::System)
        );
        let event = created.system.unwrap();
        assert_eq!(
            (event.op, event.actor_user_id, event.name.as_str()),
            (GroupOp::AddMembers, a.user_id, "trio")
        );
    }

    let ack = ca.send_message(g, b"hello all", new_key()).unwrap();
    assert_eq!(ack.seq, 2);
    for conn in [&mut cb, &mut cc] {
        let m = next_deliver(conn);
        assert_eq!(
            (m.seq, m.sender_user_id, m.body.as_slice()),
            (2, a.user_id, &b"hello all"[..])
        );
    }
    cc.send_message(g, b"hi from tcp", new_key()).unwrap();
    for conn in [&mut ca, &mut cb] {
        let m = next_deliver(conn);
        assert_eq!((m.seq, m.sender_user_id), (3, c.user_id));
    }
    let history = cb.history(g, 0, 0, 10).unwrap();
    assert_eq!(
        history.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    // The conversation list names it a group.
    let list = cb.conversations(10).unwrap();
    assert!(list
        .iter()
        .any(|s| s.conversation_id == g && s.kind == wire::message::ConversationKind::Group));
    // Clients cannot forge system messages.
    let forged = cb.send(wire::message::Send {
        conversation_id: g,
        idempotency_key: new_key(),
        kind: MessageKind::System,
        body: Vec::new(),
        media: None,
        reply_to_seq: 0,
    });
    assert_eq!(code(forged), ErrorCode::InvalidArgument);
}

#[test]
fn an_offline_member_catches_up_500_messages_in_order_once() {
    let server = server(&[]);
    let (_, a) = user(&server, "oa");
    let (_, b) = user(&server, "ob");
    let (_, c) = user(&server, "oc");
    let (mut ca, _) = online(&server, Transport::Tcp, &a);
    let g = ca
        .create_group("busy", &[b.user_id, c.user_id])
        .unwrap()
        .conversation_id;
    let (mut cb, _) = online(&server, Transport::Tcp, &b);
    for i in 0..500u32 {
        let sender = if i % 2 == 0 { &mut ca } else { &mut cb };
        sender
            .send_message(g, format!("m{i}").as_bytes(), new_key())
            .unwrap();
    }
    let (_, missed) = online(&server, Transport::WsBinary, &c);
    let mine: Vec<&StoredMessage> = missed.iter().filter(|m| m.conversation_id == g).collect();
    assert_eq!(mine.len(), 501, "the creation and 500 messages");
    for (i, m) in mine.iter().enumerate() {
        assert_eq!(m.seq, i as u64 + 1, "in order, once");
    }
    for (i, m) in mine.iter().skip(1).enumerate() {
        assert_eq!(m.body, format!("m{i}").into_bytes());
    }
}

#[test]
fn membership_changes_obey_roles_and_removed_members_get_nothing_after() {
    let server = server(&["--group-members-max", "4"]);
    let (_, a) = user(&server, "ma");
    let (_, b) = user(&server, "mb");
    let (_, c) = user(&server, "mc");
    let (_, d) = user(&server, "md");
    let (_, e) = user(&server, "me");
    let (mut ca, _) = online(&server, Transport::WsBinary, &a);
    let (mut cb, _) = online(&server, Transport::Tcp, &b);
    let (mut cc, _) = online(&server, Transport::WsJson, &c);
    let g = ca
        .create_group("club", &[b.user_id, c.user_id])
        .unwrap()
        .conversation_id;

    // Plain members change nothing; strangers and unknown users are refused, typed.
    assert_eq!(
        code(cb.update_group(update(g, GroupOp::AddMembers, &[d.user_id]))),
        ErrorCode::Forbidden
    );
    let mut rename = update(g, GroupOp::Rename, &[]);
    rename.name = "mine now".to_string();
    assert_eq!(code(cb.update_group(rename.clone())), ErrorCode::Forbidden);
    assert_eq!(
        code(cb.update_group(update(g, GroupOp::RemoveMembers, &[c.user_id]))),
        ErrorCode::Forbidden
    );
    assert_eq!(
        code(ca.update_group(update(g, GroupOp::AddMembers, &[12345]))),
        ErrorCode::NotFound
    );
    assert_eq!(
        code(ca.update_group(update(g, GroupOp::RemoveMembers, &[d.user_id]))),
        ErrorCode::NotFound
    );
    assert_eq!(
        code(ca.update_group(update(g + 2, GroupOp::Rename, &[]))),
        ErrorCode::NotFound
    );
    let (mut cd, _) = online(&server, Transport::Tcp, &d);
    assert_eq!(
        code(cd.send_message(g, b"let me in", new_key())),
        ErrorCode::Forbidden
    );
    assert_eq!(code(cd.history(g, 0, 0, 10)), ErrorCode::Forbidden);
    assert_eq!(code(cd.group_info(g)), ErrorCode::Forbidden);

    // The owner makes b an admin; b may then add d, but not past the cap of 4.
    let mut promote = update(g, GroupOp::SetRole, &[b.user_id]);
    promote.role = GroupRole::Admin;
    ca.update_group(promote).unwrap();
    ca.send_message(g, b"before d", new_key()).unwrap();
    let info = cb
        .update_group(update(g, GroupOp::AddMembers, &[d.user_id]))
        .unwrap();
    let joined = info
        .members
        .iter()
        .find(|m| m.user_id == d.user_id)
        .unwrap()
        .joined_seq;
    assert_eq!(
        code(cb.update_group(update(g, GroupOp::AddMembers, &[e.user_id]))),
        ErrorCode::GroupFull
    );
    assert_eq!(
        code(cb.update_group(update(g, GroupOp::SetRole, &[c.user_id]))),
        ErrorCode::Forbidden,
        "only the owner sets roles"
    );
    assert_eq!(
        cb.update_group(rename).unwrap().name,
        "mine now",
        "admins rename"
    );

    // d sees history from its join point only, and its own join.
    let seen = next_deliver(&mut cd);
    assert_eq!((seen.seq, seen.kind), (joined, MessageKind::System));
    let history = cd.history(g, 0, 0, 50).unwrap();
    assert!(
        history.messages.iter().all(|m| m.seq >= joined),
        "{:?}",
        story(&history.messages)
    );
    assert!(!history.messages.iter().any(|m| m.body == b"before d"));

    // c is removed: it gets the message saying so, then nothing; it can no longer post
    // or read, while the others carry on.
    let removal = ca
        .update_group(update(g, GroupOp::RemoveMembers, &[c.user_id]))
        .unwrap();
    assert!(!removal.members.iter().any(|m| m.user_id == c.user_id));
    let mut said = next_deliver(&mut cc);
    while said.kind != MessageKind::System
        || said.system.as_ref().map(|s| s.op) != Some(GroupOp::RemoveMembers)
    {
        said = next_deliver(&mut cc);
    }
    assert_eq!(said.system.unwrap().user_ids, vec![c.user_id]);
    ca.send_message(g, b"after c left", new_key()).unwrap();
    let m = delivers(&mut cd, 1);
    assert!(m.iter().all(|m| m.seq > joined));
    assert_no_deliver(&mut cc, Duration::from_millis(300));
    assert_eq!(
        code(cc.send_message(g, b"still here?", new_key())),
        ErrorCode::Forbidden
    );
    assert_eq!(code(cc.history(g, 0, 0, 10)), ErrorCode::Forbidden);

    // b leaves; a plain member may leave, and the group goes on.
    let left = cb.update_group(update(g, GroupOp::Leave, &[])).unwrap();
    assert!(!left.members.iter().any(|m| m.user_id == b.user_id));
    assert_eq!(
        code(cb.send_message(g, b"gone", new_key())),
        ErrorCode::Forbidden
    );

    // Membership survives a crash and a restart.
    let before = ca.group_info(g).unwrap().0;
    let dir = server.data_dir.clone();
    let mut server = server;
    server.kill();
    let server = Server::start_in(dir, FAST);
    let (mut ca, _) = online(&server, Transport::Tcp, &a);
    let after = ca.group_info(g).unwrap().0;
    assert_eq!(before.members, after.members);
    assert_eq!(before.name, after.name);
    ca.send_message(g, b"after restart", new_key()).unwrap();
}

/// One scenario's story as each member saw it: live pushes for the online members, the
/// catch-up for the one that was offline.
fn fan_out_scenario(threshold: &str) -> Vec<Vec<(u64, u64, Vec<u8>)>> {
    let server = server(&["--group-fanout-write-max", threshold]);
    let logins: Vec<Login> = (0..5).map(|i| user(&server, &format!("f{i}")).1).collect();
    let mut conns: Vec<Connection> = logins[..4]
        .iter()
        .map(|l| online(&server, Transport::Tcp, l).0)
        .collect();
    let others: Vec<u64> = logins[1..].iter().map(|l| l.user_id).collect();
    let g = conns[0]
        .create_group("fans", &others)
        .unwrap()
        .conversation_id;
    for i in 0..60usize {
        let body = format!("{i}");
        conns[i % 3]
            .send_message(g, body.as_bytes(), new_key())
            .unwrap();
    }
    // A sender's own messages come back as acks, not pushes: members 0..3 sent 20 each.
    let mut stories: Vec<Vec<(u64, u64, Vec<u8>)>> = conns
        .iter_mut()
        .enumerate()
        .map(|(i, c)| story(&delivers(c, if i < 3 { 41 } else { 61 })))
        .collect();
    let (_, missed) = online(&server, Transport::WsBinary, &logins[4]);
    stories.push(story(&missed));
    stories
}

#[test]
fn fan_out_on_read_gives_what_fan_out_on_write_gives() {
    // 5 members: over a threshold of 2 (on read), under one of 256 (on write).
    let on_read = fan_out_scenario("2");
    let on_write = fan_out_scenario("256");
    for stories in [&on_read, &on_write] {
        let offline = stories.last().unwrap();
        assert_eq!(offline.len(), 61, "the offline member catches up on all");
        assert_eq!(
            offline.iter().map(|s| s.0).collect::<Vec<_>>(),
            (1..=61).collect::<Vec<_>>()
        );
    }
    // Users differ between the runs; compare the sequences and bodies.
    let strip = |s: &Vec<Vec<(u64, u64, Vec<u8>)>>| -> Vec<Vec<(u64, Vec<u8>)>> {
        s.iter()
            .map(|v| v.iter().map(|(q, _, b)| (*q, b.clone())).collect())
            .collect()
    };
    assert_eq!(strip(&on_read), strip(&on_write));
}

#[test]
fn group_receipts_aggregate_per_member_and_are_batched_to_the_sender() {
    let server = server(&[]);
    let (_, a) = user(&server, "ra");
    let (bname, b) = user(&server, "rb");
    let b2 = device(&server, &bname);
    let (_, c) = user(&server, "rc");
    let (mut ca, _) = online(&server, Transport::Tcp, &a);
    let g = ca
        .create_group("seen", &[b.user_id, c.user_id])
        .unwrap()
        .conversation_id;
    let (mut cb, _) = online(&server, Transport::Tcp, &b);
    let (mut cb2, _) = online(&server, Transport::WsJson, &b2);
    let (mut cc, _) = online(&server, Transport::WsBinary, &c);
    for i in 0..3 {
        ca.send_message(g, format!("r{i}").as_bytes(), new_key())
            .unwrap();
    }
    delivers(&mut cb, 3);
    delivers(&mut cb2, 3);
    delivers(&mut cc, 3);
    // b read up to 2 on one device and 4 (the last) on the other; c received all.
    cb.receipt(g, ReceiptKind::Read, 2).unwrap();
    cb2.receipt(g, ReceiptKind::Read, 4).unwrap();
    cc.receipt(g, ReceiptKind::Delivered, 4).unwrap();

    let want = |states: &[ReceiptState]| -> BTreeMap<u64, (u64, u64)> {
        states
            .iter()
            .map(|s| (s.user_id, (s.delivered_seq, s.read_seq)))
            .collect()
    };
    let expected = BTreeMap::from([
        (a.user_id, (0, 0)),
        (b.user_id, (4, 4)),
        (c.user_id, (4, 0)),
    ]);
    // The sender is pushed the moves in batches (not one frame per receipt) until they
    // add up to the final state.
    let mut pushed: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    let mut frames = 0;
    let deadline = Instant::now() + WAIT;
    while pushed.get(&b.user_id) != Some(&(4, 4)) || pushed.get(&c.user_id) != Some(&(4, 0)) {
        assert!(Instant::now() < deadline, "pushed so far: {pushed:?}");
        let update = next_receipt(&mut ca);
        assert_eq!(update.conversation_id, g);
        frames += 1;
        for s in &update.states {
            assert_eq!(s.device_id, 0, "aggregated per member");
            pushed.insert(s.user_id, (s.delivered_seq, s.read_seq));
        }
    }
    assert!(frames <= 3, "{frames} frames for 3 receipts");
    // Who has received or read a message: every member's position, on request.
    let (_, states) = cb.group_info(g).unwrap();
    assert_eq!(want(&states), expected);
    let read_2: Vec<u64> = states
        .iter()
        .filter(|s| s.read_seq >= 2)
        .map(|s| s.user_id)
        .collect();
    assert_eq!(read_2, vec![b.user_id]);
}

#[test]
fn the_conversation_list_names_direct_peers_and_groups() {
    let server = server(&[]);
    let (a_name, a) = user(&server, "la");
    let (b_name, b) = user(&server, "lb");
    let (c_name, c) = user(&server, "lc");
    let (mut ca, _) = online(&server, Transport::WsJson, &a);
    let direct_b = ca.open_direct_by_name(&b_name).unwrap().conversation_id;
    let direct_c = ca.open_direct(c.user_id).unwrap().conversation_id;
    let group = ca
        .create_group("weekend plans", &[b.user_id, c.user_id])
        .unwrap()
        .conversation_id;

    let titles = |conn: &mut Connection| -> BTreeMap<u64, String> {
        conn.conversations(100)
            .unwrap()
            .into_iter()
            .map(|s| (s.conversation_id, s.title))
            .collect()
    };
    assert_eq!(
        titles(&mut ca),
        BTreeMap::from([
            (direct_b, b_name.clone()),
            (direct_c, c_name),
            (group, "weekend plans".to_string()),
        ])
    );
    // The other side of a direct conversation sees its own peer's name.
    let (mut cb, _) = online(&server, Transport::Tcp, &b);
    assert_eq!(
        titles(&mut cb),
        BTreeMap::from([(direct_b, a_name), (group, "weekend plans".to_string())])
    );
}

//! The write pass ([`Room::deliver`]) against a model of a connection that shares none of its
//! code: a listener takes an offer only when it stands exactly at `from` and is not busy, is
//! otherwise woken, and a woken listener's task later catches up through [`Room::catch_up`] from
//! wherever it stands. Whatever the order of commits, passes, busy spells and task steps (and with
//! a ring small enough to be overtaken), once passes and tasks have run every listener must hold
//! the head, and its frames must form one gapless stream in which every revision appears once,
//! its own changes with their ack and everyone else's with ops. Run single-threaded by proptest,
//! and with concurrent committers, passes and tasks on threads.

use std::sync::Arc;

use parking_lot::Mutex;
use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;
use crate::ids::{ClientId, ClientReqId};

/// What one modelled connection has received and where it stands.
#[derive(Debug, Default)]
struct Seen {
    held: u64,
    busy: bool,
    woken: bool,
    /// Revisions received, in order (a snapshot resets the stream).
    revs: Vec<u64>,
    /// The newest snapshot's revision, if any came.
    snapshot: Option<u64>,
    /// Every problem found while absorbing frames.
    errors: Vec<String>,
    /// The range of every offer made to it, taken or not (every pass offers every listener).
    ranges: Vec<(u64, u64)>,
}

struct Model {
    client: ClientId,
    seen: Mutex<Seen>,
}

impl Model {
    fn new(client: u64) -> Arc<Model> {
        Arc::new(Model { client: ClientId(client), seen: Mutex::new(Seen::default()) })
    }

    /// Absorbs one delta frame the listener was given, checking it against where it stood.
    fn absorb(&self, seen: &mut Seen, frame: &[u8]) {
        let v: Value = match serde_json::from_slice(frame) {
            Ok(v) => v,
            Err(e) => return seen.errors.push(format!("unparsable frame: {e}")),
        };
        if v["type"] != "delta" {
            return seen.errors.push(format!("not a delta: {v}"));
        }
        if v["from"].as_u64() != Some(seen.held) {
            seen.errors.push(format!("gap: held {} got a delta from {}", seen.held, v["from"]));
        }
        for e in v["changes"].as_array().into_iter().flatten() {
            let rev = e["rev"].as_u64().unwrap_or(0);
            let mine = e["client"] == self.client.to_string();
            if mine != e.get("clientReqId").is_some() {
                seen.errors.push(format!("rev {rev}: own change without ack or another's with one: {e}"));
            }
            if !mine && e.get("ops").is_none() {
                seen.errors.push(format!("rev {rev}: another's change without ops"));
            }
            seen.revs.push(rev);
        }
        seen.held = v["to"].as_u64().unwrap_or(0);
    }

    /// The connection's task: if woken and not busy, catch up from where it stands.
    fn task_step(&self, room: &Room) {
        let mut seen = self.seen.lock();
        if !seen.woken || seen.busy {
            return;
        }
        seen.woken = false;
        let mut scratch = Vec::new();
        match room.catch_up(Cursor::Holds(Rev(seen.held)), self.client, &mut scratch) {
            CatchUp::Current => {}
            CatchUp::Delta { frame, .. } => self.absorb(&mut seen, &frame),
            CatchUp::Snapshot(snapshot, _) => {
                seen.held = snapshot.rev.0;
                seen.snapshot = Some(snapshot.rev.0);
                seen.revs.clear();
            }
        }
    }
}

impl Listener for Model {
    fn client(&self) -> ClientId {
        self.client
    }

    fn offer(&self, offer: &Offer<'_>) {
        let mut seen = self.seen.lock();
        seen.ranges.push((offer.from.0, offer.to.0));
        if seen.busy || seen.held != offer.from.0 {
            seen.woken = true;
            return;
        }
        self.absorb(&mut seen, offer.frame);
        if seen.held != offer.to.0 {
            let held = seen.held;
            seen.errors.push(format!("offer to {} left the listener at {held}", offer.to));
        }
    }

    fn wake(&self) {
        self.seen.lock().woken = true;
    }
}

fn room(history: usize) -> Room {
    Room::new(RoomId::parse("fanout").unwrap(), RoomConfig { history, ..RoomConfig::default() })
}

fn commit(room: &Room, author: u64, n: u64) {
    let req = ChangeRequest {
        author: ClientId(author),
        user: None,
        client_req_id: Some(ClientReqId(n + 1)),
        base_rev: None,
        mode: crate::protocol::Mode::Overwrite,
        ops: crate::patch::parse_patch(json!([{"op": "add", "path": format!("/a{author}"), "value": n}]))
            .unwrap(),
        extras: Extras::default(),
    };
    room.commit(req).expect("an overwrite commits");
}

/// Passes and tasks until nobody is woken, then checks every listener against the head.
fn settle_and_check(room: &Room, models: &[Arc<Model>]) -> Result<(), String> {
    for m in models {
        m.seen.lock().busy = false;
    }
    room.deliver();
    for _ in 0..4 {
        for m in models {
            m.task_step(room);
        }
    }
    let head = room.rev().0;
    for m in models {
        let seen = m.seen.lock();
        if !seen.errors.is_empty() {
            return Err(format!("{}: {:?}", m.client, seen.errors));
        }
        if seen.woken {
            return Err(format!("{} still woken after its task ran", m.client));
        }
        if seen.held != head {
            return Err(format!("{} holds {} of {head}", m.client, seen.held));
        }
        let start = seen.snapshot.unwrap_or(0);
        let want: Vec<u64> = (start + 1..=head).collect();
        if seen.revs != want {
            return Err(format!("{} received {:?} after {start}, want {want:?}", m.client, seen.revs));
        }
    }
    Ok(())
}

#[derive(Debug, Clone)]
enum Step {
    Commit(u64),
    Deliver,
    Busy(usize, bool),
    Task(usize),
}

fn arb_step(listeners: usize) -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (1..=listeners as u64).prop_map(Step::Commit),
        3 => Just(Step::Deliver),
        2 => (0..listeners, any::<bool>()).prop_map(|(i, b)| Step::Busy(i, b)),
        3 => (0..listeners).prop_map(Step::Task),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn every_listener_converges_on_one_gapless_stream(
        history in 2usize..10,
        steps in prop::collection::vec(arb_step(4), 1..80),
    ) {
        let room = room(history);
        let models: Vec<Arc<Model>> = (1..=4).map(Model::new).collect();
        let _listening: Vec<_> = models.iter().map(|m| room.listen(m.clone())).collect();
        let mut n = 0;
        for step in steps {
            match step {
                Step::Commit(author) => {
                    commit(&room, author, n);
                    n += 1;
                }
                Step::Deliver => room.deliver(),
                Step::Busy(i, b) => models[i].seen.lock().busy = b,
                Step::Task(i) => models[i].task_step(&room),
            }
        }
        prop_assert_eq!(settle_and_check(&room, &models), Ok(()));
    }
}

/// The pass is run by whoever commits, concurrently: three committers each deliver after some of
/// their own commits, while a task thread flips listeners busy and runs their catch-ups. The
/// passes must split the revisions between them (the ranges offered never overlap: each revision
/// is passed once) and nobody may miss one.
#[test]
fn concurrent_passes_leave_nobody_behind() {
    for round in 0..20 {
        let room = Arc::new(room(if round % 2 == 0 { 1024 } else { 16 }));
        let models: Vec<Arc<Model>> = (1..=6).map(Model::new).collect();
        let _listening: Vec<_> = models.iter().map(|m| room.listen(m.clone())).collect();
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        std::thread::scope(|s| {
            for author in 1..=3u64 {
                let room = room.clone();
                s.spawn(move || {
                    for n in 0..300 {
                        commit(&room, author, n);
                        if n.is_multiple_of(author + 1) {
                            room.deliver();
                        }
                    }
                    room.deliver();
                });
            }
            let (task_room, task_models, task_done) = (room.clone(), models.clone(), done.clone());
            let tasks = s.spawn(move || {
                let mut i = 0usize;
                while !task_done.load(std::sync::atomic::Ordering::Acquire) {
                    let m = &task_models[i % task_models.len()];
                    m.seen.lock().busy = i.is_multiple_of(7);
                    m.task_step(&task_room);
                    i += 1;
                }
            });
            // Stops the task thread once the committers are done (scope joins them first: the
            // committers are the first three spawned, so wait for the revision instead).
            while room.rev().0 < 900 {
                std::thread::yield_now();
            }
            done.store(true, std::sync::atomic::Ordering::Release);
            tasks.join().unwrap();
        });
        settle_and_check(&room, &models).unwrap_or_else(|e| panic!("round {round}: {e}"));
        for m in &models {
            let mut ranges = m.seen.lock().ranges.clone();
            ranges.sort_unstable();
            assert!(ranges.len() > 1, "several passes ran");
            for w in ranges.windows(2) {
                assert!(w[0].0 < w[0].1, "a pass offers at least one revision: {w:?}");
                assert!(w[1].0 >= w[0].1, "round {round}: two passes offered the same revision: {w:?}");
            }
        }
    }
}

//! Hostile input on every transport: garbage, truncated frames, huge
//! lengths and floods. The offender is cut off (with an ERROR where the
//! transport allows), the hub stays up, and a bystander never notices.

mod common;

use std::time::Duration;

use common::Hub;
use ipchub::hub::queue::{Kind, OutQueue};
use ipchub::hub::TransportKind::{self, *};
use ipchub::wire::{self, FrameType};

const WAIT: Option<Duration> = Some(Duration::from_secs(10));

/// Write `bytes` as one "frame" through a raw link (a message transport
/// sends it as one message or record, whatever it holds).
fn send_raw(hub: &Hub, t: TransportKind, bytes: &[u8]) {
    let (ctrl, mut link) = hub.client_via(t).into_raw();
    let mut q = OutQueue::new(usize::MAX, usize::MAX);
    q.push(Kind::Control, &[bytes]);
    let t0 = std::time::Instant::now();
    while !q.is_empty() && t0.elapsed() < Duration::from_secs(5) {
        if link.flush(&mut q).is_err() {
            break; // the hub already hung up: fine
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    // Give the hub a moment to read it, then hang up.
    std::thread::sleep(Duration::from_millis(20));
    drop((ctrl, link));
}

fn frame(ty: FrameType, channel: &str, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    wire::encode(&mut v, ty, 0, 0, channel, payload, 0, 1);
    v
}

#[test]
fn garbage_truncation_and_huge_lengths_on_every_transport_harm_no_one() {
    let hub = Hub::start_with("[hub]\nmax_message_size = 4096\n[queue]\nmax_bytes = 100000\n");
    let mut bystander = hub.subscriber(Shm, "live");
    let mut p = hub.client_via(Mqueue);
    let mut huge = frame(FrameType::Publish, "live", b"x");
    huge[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
    let mut wrong_version = frame(FrameType::Publish, "live", b"x");
    wrong_version[2] = 9;
    let full = frame(FrameType::Publish, "live", &[7u8; 100]);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("garbage", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("zeros", vec![0u8; 300]),
        ("huge length", huge),
        ("wrong version", wrong_version),
        ("truncated", full[..60].to_vec()),
        ("hub-only type", frame(FrameType::Data, "live", b"x")),
        ("bad channel", frame(FrameType::Publish, "a//b", b"x")),
    ];
    let mut n = 0u32;
    for &t in TransportKind::ALL.iter() {
        for (name, bytes) in &cases {
            send_raw(&hub, t, bytes);
            n += 1;
            let marker = format!("{} after {name}", t.name());
            assert_eq!(
                p.publish_confirmed("live", marker.as_bytes()).unwrap(),
                1,
                "{marker}"
            );
            let m = bystander
                .recv(WAIT)
                .unwrap()
                .expect("bystander still served");
            assert_eq!(
                m.payload,
                marker.as_bytes(),
                "nothing of the hostile input was delivered"
            );
        }
    }
    let st = p.stats().unwrap();
    assert_eq!(st.client_count, 2, "every offender is gone ({n} of them)");
    assert_eq!(
        st.totals.messages_in,
        TransportKind::ALL.len() as u64 * cases.len() as u64
    );
}

#[test]
fn a_flood_from_one_client_does_not_starve_another() {
    let hub = Hub::start();
    let mut slow_sub = hub.subscriber(Socket, "quiet");
    let mut flood_sub = hub.subscriber(Socket, "flood");
    let flooder = std::thread::spawn({
        let opts = hub.options(Shm);
        move || {
            let mut f = ipchub::client::Client::connect(&opts).unwrap();
            for i in 0..200_000u32 {
                f.publish("flood", &i.to_le_bytes()).unwrap();
            }
            f.flush().unwrap();
        }
    });
    let reader = std::thread::spawn(move || {
        for _ in 0..200_000 {
            flood_sub.recv(WAIT).unwrap().unwrap();
        }
    });
    // While the flood runs, another client's messages still get through.
    let mut p = hub.client();
    for i in 0..20u32 {
        assert_eq!(p.publish_confirmed("quiet", &i.to_le_bytes()).unwrap(), 1);
        assert_eq!(
            slow_sub.recv(WAIT).unwrap().unwrap().payload,
            i.to_le_bytes()
        );
    }
    flooder.join().unwrap();
    reader.join().unwrap();
}

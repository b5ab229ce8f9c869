//! Token throughput on one core: mint, verify, mint + verify, and verify + durable replay
//! record. Prints figures; run with `cargo bench -p orchestrator --bench tokens`.
//!
//! Method: single thread; each figure is the median of 5 runs of ~1 s each after a warm-up run;
//! a run counts whole iterations. Tokens carry realistic claims (a Hue action with three
//! arguments, a user approval binding). The replay-store figure uses a SQLite file in the
//! target directory (real disk) with WAL and synchronous=FULL, one fsync per accepted token.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::indexing_slicing
)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use orchestrator::mint::{MintRequest, Minter};
use protocol::message::Digest;
use protocol::token::{self, ApprovalBinding, Expected, Keyset};
use protocol::{ActionName, AgentName, ApprovalId, ChatUser, PlanId, Principal};

fn per_second(mut f: impl FnMut(u64)) -> f64 {
    let mut i = 0u64;
    let run = |i: &mut u64, f: &mut dyn FnMut(u64)| {
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < Duration::from_secs(1) {
            for _ in 0..64 {
                f(*i);
                *i += 1;
                n += 1;
            }
        }
        n as f64 / start.elapsed().as_secs_f64()
    };
    run(&mut i, &mut f);
    let mut rates: Vec<f64> = (0..5).map(|_| run(&mut i, &mut f)).collect();
    rates.sort_by(f64::total_cmp);
    rates[2]
}

fn main() {
    let minter = Minter::new(1, &[7; 32], Principal::orchestrator());
    let keyset = Keyset::single(1, minter.verifying_key()).unwrap();
    let hue = AgentName::new("hue").unwrap();
    let user = ChatUser::new("telegram:5551234").unwrap();
    let act = ActionName::new("room.set").unwrap();
    let args = serde_json::json!({"room": "living", "brightness": 20, "mirek": 454, "transition_ms": 600000});
    let req = MintRequest {
        audience: &hue,
        subject: &user,
        action: &act,
        args: &args,
        plan_id: PlanId::from_bytes([1; 16]),
        step: 0,
        approval: ApprovalBinding::Approved {
            id: ApprovalId::from_bytes([2; 16]),
            hash: Digest([3; 32]),
        },
        ttl_secs: 30,
    };
    let expected = Expected {
        audience: &hue,
        action: &act,
        args: &args,
        changes_world: true,
    };
    let now = 1_767_225_600;
    let jti = |i: u64| {
        let mut j = [0u8; 16];
        j[..8].copy_from_slice(&i.to_be_bytes());
        j
    };

    let mint = per_second(|i| {
        black_box(minter.mint(&req, now, jti(i)).unwrap());
    });
    let sample = minter.mint(&req, now, jti(0)).unwrap().text();
    let verify = per_second(|_| {
        black_box(token::verify_text(&keyset, &sample, expected, now + 1).unwrap());
    });
    let both = per_second(|i| {
        let t = minter.mint(&req, now, jti(i)).unwrap().text();
        black_box(token::verify_text(&keyset, &t, expected, now + 1).unwrap());
    });

    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let mut store = agent_runtime::ReplayStore::open(&dir.path().join("replay.db")).unwrap();
    let tokens: Vec<String> = (0..200_000u64)
        .map(|i| minter.mint(&req, now, jti(i)).unwrap().text())
        .collect();
    let mut next = 0usize;
    let durable = per_second(|_| {
        let t = &tokens[next % tokens.len()];
        next += 1;
        black_box(
            agent_runtime::verify_and_consume(&keyset, &mut store, t, expected, now + 1).unwrap(),
        );
    });

    println!("cap.v1 token benchmark (single thread, median of 5 x 1 s runs)");
    println!("  mint                          {mint:>12.0} tokens/s");
    println!("  verify                        {verify:>12.0} tokens/s");
    println!("  mint + verify                 {both:>12.0} tokens/s   (goal >= 10000)");
    println!("  verify + durable replay store {durable:>12.0} tokens/s   (one fsync each)");
}

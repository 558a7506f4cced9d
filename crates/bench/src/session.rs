//! A session is one mechanism set up for one measurement: the measuring
//! process's endpoint plus its worker processes. The two measurements run
//! here the same way for every mechanism: a warm-up round that is not
//! counted, then `--repetitions` measured rounds.

use std::any::Any;
use std::time::Duration;

use super::measure::{
    self, message, new_histogram, publish_round, stamp, Endpoint, Latency, Limit, Percentiles,
    RunError, Spread, Throughput, CLOSE,
};
use super::proc::Worker;

/// How every measurement runs, from the command line.
#[derive(Debug, Clone)]
pub struct Plan {
    pub limit: Limit,
    pub warmup: Limit,
    pub repetitions: u32,
    pub subscribers: u32,
    /// Longest one round may take before its workers are killed.
    pub round_timeout: Duration,
    pub pin: bool,
    /// Hub clients busy-poll their channel rings this long before sleeping.
    pub busy_poll: Option<Duration>,
}

impl Plan {
    /// The CPU for the `i`-th worker under --pin: any but CPU 0, which the
    /// measuring process holds.
    pub fn worker_cpu(&self, i: usize) -> Option<usize> {
        if !self.pin {
            return None;
        }
        let n = online_cpus();
        Some(if n > 1 { 1 + i % (n - 1) } else { 0 })
    }

    /// How long to wait for a worker's answer to a round.
    fn answer_timeout(&self) -> Duration {
        self.round_timeout + Duration::from_secs(5)
    }
}

/// CPUs online, whatever this process's affinity (which --pin narrows to one).
pub fn online_cpus() -> usize {
    let n = nix::unistd::sysconf(nix::unistd::SysconfVar::_NPROCESSORS_ONLN)
        .ok()
        .flatten()
        .unwrap_or(1);
    usize::try_from(n).unwrap_or(1).max(1)
}

/// The measuring side of one mechanism. Dropping it closes the endpoint
/// first (workers see end of file), then kills the workers, then drops the
/// guards (temporary FIFOs, queues).
pub struct Session {
    pub ep: Box<dyn Endpoint>,
    pub workers: Vec<Worker>,
    pub guards: Vec<Box<dyn Any>>,
}

impl Session {
    pub fn new(ep: Box<dyn Endpoint>, workers: Vec<Worker>) -> Session {
        Session {
            ep,
            workers,
            guards: Vec::new(),
        }
    }

    /// After a failure on our side, a worker's own reason is the better one
    /// (our EPIPE is usually its crash).
    fn explain(&mut self, e: RunError) -> RunError {
        if matches!(e, RunError::Unavailable(_)) {
            return e;
        }
        for w in &mut self.workers {
            if let Some(x) = w.explain() {
                return x;
            }
        }
        e
    }

    fn arm(&self, plan: &Plan) {
        for w in &self.workers {
            w.arm(plan.round_timeout);
        }
    }

    /// Send the close marker and wait for every worker to exit cleanly.
    fn close(&mut self, size: usize, plan: &Plan) -> Result<(), RunError> {
        let mut msg = message(size);
        stamp(&mut msg, CLOSE, 0);
        self.arm(plan);
        self.ep.send_marker(&msg)?;
        for w in &mut self.workers {
            w.finish(plan.answer_timeout())?;
        }
        Ok(())
    }
}

/// Throughput: the measuring process publishes, every worker is a sink.
pub fn throughput(mut s: Session, size: usize, plan: &Plan) -> Result<Throughput, RunError> {
    run_throughput(&mut s, size, plan).map_err(|e| s.explain(e))
}

fn run_throughput(s: &mut Session, size: usize, plan: &Plan) -> Result<Throughput, RunError> {
    let mut msg = message(size);
    let mut slowest = Vec::new();
    let mut aggregate = Vec::new();
    let mut t = Throughput {
        msgs_per_sec: Spread::of(&[0.0]).expect("one value"),
        mb_per_sec: Spread::of(&[0.0]).expect("one value"),
        aggregate_msgs_per_sec: Spread::of(&[0.0]).expect("one value"),
        subscribers: s.workers.len() as u32,
        rounds: plan.repetitions,
        sent: 0,
        received: 0,
        lost: 0,
        out_of_order: 0,
        bad_size: 0,
    };
    for round in 0..=plan.repetitions as u64 {
        s.arm(plan);
        let limit = if round == 0 { plan.warmup } else { plan.limit };
        let (sent, t0) = publish_round(&mut *s.ep, &mut msg, round, limit)?;
        let mut reports = Vec::with_capacity(s.workers.len());
        for w in &mut s.workers {
            let r = w.round(plan.answer_timeout())?;
            if r.round != round {
                return Err(RunError::failed(format!(
                    "sink reported round {} while round {round} ran",
                    r.round
                )));
            }
            reports.push(r);
        }
        if round == 0 {
            continue;
        }
        let mut slow = f64::INFINITY;
        let mut total = 0;
        let mut end = t0;
        for r in &reports {
            let secs = r.last_ns.saturating_sub(t0) as f64 / 1e9;
            let rate = if r.received > 0 && secs > 0.0 {
                r.received as f64 / secs
            } else {
                0.0
            };
            slow = slow.min(rate);
            total += r.received;
            end = end.max(r.last_ns);
            t.lost += sent.saturating_sub(r.received);
            t.out_of_order += r.out_of_order;
            t.bad_size += r.bad_size;
        }
        let secs = end.saturating_sub(t0) as f64 / 1e9;
        slowest.push(slow);
        aggregate.push(if secs > 0.0 { total as f64 / secs } else { 0.0 });
        t.sent += sent;
        t.received += total;
    }
    s.close(size, plan)?;
    t.msgs_per_sec = Spread::of(&slowest).expect("at least one round");
    let mb: Vec<f64> = slowest.iter().map(|r| r * size as f64 / 1e6).collect();
    t.mb_per_sec = Spread::of(&mb).expect("at least one round");
    t.aggregate_msgs_per_sec = Spread::of(&aggregate).expect("at least one round");
    Ok(t)
}

/// Latency: the measuring process pings, one worker echoes.
pub fn latency(mut s: Session, size: usize, plan: &Plan) -> Result<Latency, RunError> {
    run_latency(&mut s, size, plan).map_err(|e| s.explain(e))
}

fn run_latency(s: &mut Session, size: usize, plan: &Plan) -> Result<Latency, RunError> {
    let mut msg = message(size);
    let mut merged = new_histogram();
    let mut p50s = Vec::new();
    let mut lost = 0;
    for round in 0..=plan.repetitions as u64 {
        s.arm(plan);
        let limit = if round == 0 { plan.warmup } else { plan.limit };
        let mut h = new_histogram();
        let l = measure::ping_round(&mut *s.ep, &mut msg, round, limit, &mut h)?;
        if round == 0 {
            continue;
        }
        lost += l;
        if !h.is_empty() {
            p50s.push(h.value_at_quantile(0.5) as f64);
            merged.add(&h).expect("same bounds");
        }
    }
    s.close(size, plan)?;
    if merged.is_empty() {
        return Err(RunError::failed("no ping was ever echoed"));
    }
    let rtt = Percentiles::of(&merged);
    Ok(Latency {
        one_way_ns: rtt.halved(),
        round_trip_ns: rtt,
        round_trip_p50_ns: Spread::of(&p50s).expect("not empty"),
        samples: merged.len(),
        lost,
        rounds: plan.repetitions,
    })
}

//! Keeping rayon's other workers awake through a forward pass.
//!
//! A forward pass alternates parallel kernels (products, attention) with short serial
//! stretches (norms, residual additions, Burn's operations on small tensors). rayon's
//! idle workers spin for a few dozen rounds and then sleep; the next parallel kernel
//! wakes them, which inside a virtual machine means an interrupt to a halted virtual
//! CPU: measured with `perf` on the 2-core Xeon of docs/serving.md, 8 sequences
//! decoding, the thread running the pass spent 6.7% of its time waking the other
//! worker (`try_to_wake_up`), and the other worker was off its core a third of the
//! time. [`with_workers_awake`] gives every other worker a task for the length of the
//! pass: run whatever rayon work appears, and spin while there is none.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Workers now spinning for a pass (for the tests).
static SPINNING: AtomicUsize = AtomicUsize::new(0);

/// How long a spinner goes on finding no work before it hands over to a successor.
///
/// rayon runs a queued task wherever a worker waits, also inside a join of another
/// task; a spinner started there would hold that task's frame under it, and with it
/// the pass, until the pass ended: a deadlock (seen: `ember chat` on the tiny Qwen3, a
/// spinner taken up inside an attention task the caller was waiting for). So a spinner
/// that finds nothing for this long returns (letting whatever is under it go on) and
/// queues a successor on its own worker, which takes over once that worker is idle.
const IDLE_LIMIT: Duration = Duration::from_millis(1);

/// Runs `work` with the pool's other workers kept busy looking for rayon work until it
/// returns. Called from outside a rayon worker, or with one thread, it only runs
/// `work`.
pub fn with_workers_awake<R>(work: impl FnOnce() -> R) -> R {
    let Some(caller) = rayon::current_thread_index() else {
        return work();
    };
    if rayon::current_num_threads() < 2 {
        return work();
    }
    let done = Arc::new(AtomicBool::new(false));
    let seen = done.clone();
    rayon::spawn_broadcast(move |worker| spin(&seen, caller, worker.index()));
    // Set on the way out, also if `work` panics, so the spinners end.
    struct Done(Arc<AtomicBool>);
    impl Drop for Done {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Release);
        }
    }
    let _done = Done(done);
    work()
}

/// On worker `me`: runs whatever rayon work appears until `done`, spinning while there
/// is none, or until [`IDLE_LIMIT`] passes without any (then a successor is queued).
fn spin(done: &Arc<AtomicBool>, caller: usize, me: usize) {
    // The caller's own copy runs when it next looks for work (while it waits in a
    // join, say): it must return at once.
    if me == caller {
        return;
    }
    SPINNING.fetch_add(1, Ordering::SeqCst);
    let mut last_work = Instant::now();
    while !done.load(Ordering::Acquire) {
        if rayon::yield_now() == Some(rayon::Yield::Executed) {
            last_work = Instant::now();
        } else if last_work.elapsed() > IDLE_LIMIT {
            let done = done.clone();
            rayon::spawn(move || {
                let me = rayon::current_thread_index().expect("a rayon task");
                spin(&done, caller, me)
            });
            break;
        } else {
            std::hint::spin_loop();
        }
    }
    SPINNING.fetch_sub(1, Ordering::SeqCst);
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayon::prelude::*;
    use std::time::{Duration, Instant};

    /// Waits up to 10 s for `SPINNING` to be `n`.
    fn spinning_becomes(n: usize) -> bool {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if SPINNING.load(Ordering::SeqCst) == n {
                return true;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        false
    }

    #[test]
    fn the_other_worker_spins_during_the_pass_runs_its_work_and_stops_after() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .expect("a pool");
        pool.install(|| {
            let sum = with_workers_awake(|| {
                // One spinner: the other worker's (the caller's own copy returns).
                assert!(spinning_becomes(1), "the other worker spins");
                // Work split while it spins is done, by both threads.
                let threads = std::sync::Mutex::new(std::collections::BTreeSet::new());
                let sum: u64 = (0..4_000usize)
                    .into_par_iter()
                    .with_max_len(1)
                    .map(|i| {
                        threads
                            .lock()
                            .unwrap()
                            .insert(rayon::current_thread_index());
                        std::thread::sleep(Duration::from_micros(50));
                        i as u64
                    })
                    .sum();
                assert_eq!(threads.lock().unwrap().len(), 2, "both workers took work");
                sum
            });
            assert_eq!(sum, 4_000 * 3_999 / 2);
            assert!(spinning_becomes(0), "the spinner ends with the pass");
            // A pass that panics still ends its spinner.
            let panicked = std::panic::catch_unwind(|| {
                with_workers_awake(|| {
                    assert!(spinning_becomes(1));
                    panic!("a failing pass");
                })
            });
            assert!(panicked.is_err());
            assert!(spinning_becomes(0), "the spinner ends after a panic");
        });
        // A spinner that finds no work returns after IDLE_LIMIT even while the pass goes
        // on (so whatever it was started on top of can continue: the deadlock it
        // prevents), and a successor on its worker carries on until the pass ends.
        pool.install(|| {
            let done = Arc::new(AtomicBool::new(false));
            let start = Instant::now();
            spin(&done, usize::MAX, 0);
            let spun = start.elapsed();
            assert!(
                spun >= IDLE_LIMIT && spun < Duration::from_secs(5),
                "{spun:?}"
            );
            assert!(spinning_becomes(1), "the successor spins");
            done.store(true, Ordering::Release);
            assert!(spinning_becomes(0), "the successor ends with the pass");
        });
        // Outside a pool: the work only.
        assert_eq!(with_workers_awake(|| 7), 7);
    }
}

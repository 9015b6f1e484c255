//! [`Collective`] on MPI (Open MPI, MPICH): `mpirun -np N ember pretrain ...`, or
//! Slurm's `srun` through MPI's own launcher support.
//!
//! Each exchange first checks that every rank arrived at the same one (a small message
//! to every other rank carrying the exchange's number and a hash of its name), then
//! sums with MPI's non-blocking all-reduce in pieces of 16 MB. Both wait at most the
//! job's time limit: a rank that does not arrive (hung, stopped, or at another
//! exchange because its configuration differs) is named in a one-line error and the
//! whole job ends through `MPI_Abort`, since MPI cannot take back an exchange that is
//! under way. (Gathering to rank 0, once every rank has arrived, waits without a
//! limit.) A rank that dies is seen by the launcher, which ends the others.
//!
//! MPI is called from the thread that created the [`MpiCollective`] only
//! (`MPI_THREAD_FUNNELED`); the kernels' own threads never call it.

use std::cell::Cell;
use std::time::{Duration, Instant};

use mpi::Threading;
use mpi::collective::{CommunicatorCollectives, Root, SystemOperation};
use mpi::environment::Universe;
use mpi::point_to_point::{Destination, Source};
use mpi::request::{Request, Scope};
use mpi::topology::{Communicator, SimpleCommunicator};

use crate::collective::{Collective, CollectiveError, launched};

/// Floats summed per all-reduce call: a bounded send buffer beside the values (and
/// NCCL's device buffer, `nccl.rs`).
pub(crate) const BUCKET: usize = 4 << 20;

/// Tag of the arrival messages.
const ARRIVAL_TAG: i32 = 7;

/// Tag of [`Collective::gather_to_root`]'s messages.
const GATHER_TAG: i32 = 8;

/// The world of an MPI job, initialised by [`MpiCollective::from_launcher`] and
/// finalised when dropped.
pub struct MpiCollective {
    world: SimpleCommunicator,
    timeout: Duration,
    /// Exchanges made so far, checked between ranks at each.
    exchanges: Cell<u64>,
    // Dropped last: finalises MPI.
    _universe: Universe,
}

impl MpiCollective {
    /// Initialises MPI when this process was started by an MPI launcher (none of its
    /// variables set: `None`, and MPI is not touched), with `timeout` as the longest
    /// any rank waits for the others at an exchange.
    pub fn from_launcher(timeout: Duration) -> Result<Option<Self>, CollectiveError> {
        if launched().is_none() {
            return Ok(None);
        }
        let failed = |message: &str| CollectiveError::Failed {
            rank: 0,
            what: "MPI initialisation".into(),
            message: message.into(),
        };
        let (universe, threading) = mpi::initialize_with_threading(Threading::Funneled)
            .ok_or_else(|| failed("MPI was already initialised in this process"))?;
        if threading < Threading::Funneled {
            return Err(failed(
                "the MPI library supports no calls from a thread of a threaded process (MPI_THREAD_FUNNELED)",
            ));
        }
        Ok(Some(Self {
            world: universe.world(),
            timeout,
            exchanges: Cell::new(0),
            _universe: universe,
        }))
    }

    /// Prints `error` on one line and ends every rank of the job.
    pub fn abort(&self, error: &dyn std::fmt::Display, code: i32) -> ! {
        eprintln!("error: {error}");
        self.world.abort(code)
    }

    /// Waits until every other rank arrived at this exchange (the same number and
    /// name); past the time limit, or at a mismatch, ends the job naming the ranks.
    fn arrive(&self, what: &str) {
        let number = self.exchanges.get() + 1;
        self.exchanges.set(number);
        let me = self.rank();
        let peers: Vec<usize> = (0..self.size()).filter(|&r| r != me).collect();
        let sent = [number, name_hash(what)];
        let mut received = vec![[0u64; 2]; peers.len()];
        mpi::request::scope(|scope| {
            let mut sends: Vec<Option<Request<'_, [u64; 2], _>>> = peers
                .iter()
                .map(|&peer| {
                    Some(
                        self.world
                            .process_at_rank(peer as i32)
                            .immediate_send_with_tag(scope, &sent, ARRIVAL_TAG),
                    )
                })
                .collect();
            let mut receives: Vec<Option<Request<'_, [u64; 2], _>>> = peers
                .iter()
                .zip(received.iter_mut())
                .map(|(&peer, slot)| {
                    Some(
                        self.world
                            .process_at_rank(peer as i32)
                            .immediate_receive_into_with_tag(scope, slot, ARRIVAL_TAG),
                    )
                })
                .collect();
            self.wait_all(&mut sends, &mut receives, |pending| {
                let missing = pending.iter().map(|&i| peers[i]).collect();
                CollectiveError::Timeout {
                    rank: me,
                    missing,
                    what: what.to_string(),
                    seconds: self.timeout.as_secs(),
                }
            });
        });
        for (peer, [their_number, their_hash]) in peers.iter().zip(&received) {
            if (*their_number, *their_hash) != (number, sent[1]) {
                let error = CollectiveError::Failed {
                    rank: me,
                    what: what.to_string(),
                    message: format!(
                        "rank {peer} is at another exchange (its number {their_number}, this rank's {number}): \
                         every rank must run the same command with the same configuration"
                    ),
                };
                self.abort(&error, 3);
            }
        }
    }

    /// Rank 0's `bytes` on every rank (NCCL's unique id), after every rank arrived.
    pub fn broadcast_from_root(&self, bytes: &mut [u8], what: &str) -> Result<(), CollectiveError> {
        self.arrive(what);
        self.world.process_at_rank(0).broadcast_into(bytes);
        Ok(())
    }

    /// The error of an all-reduce that every rank entered and that did not complete:
    /// a rank stopped or died inside it. Of two ranks, that is the other one.
    fn stalled(&self, what: &str) -> CollectiveError {
        let me = self.rank();
        if self.size() == 2 {
            return CollectiveError::Timeout {
                rank: me,
                missing: vec![1 - me],
                what: what.to_string(),
                seconds: self.timeout.as_secs(),
            };
        }
        CollectiveError::Failed {
            rank: me,
            what: what.to_string(),
            message: format!(
                "every rank arrived, but the all-reduce did not complete within {} s (a rank stopped or died inside it)",
                self.timeout.as_secs()
            ),
        }
    }

    /// Tests `sends` and `receives` until all are done; at the time limit ends the job
    /// with `timeout(indices of the receives still pending)`.
    fn wait_all<'a, S: Scope<'a>>(
        &self,
        sends: &mut [Option<Request<'a, [u64; 2], S>>],
        receives: &mut [Option<Request<'a, [u64; 2], S>>],
        timeout: impl Fn(&[usize]) -> CollectiveError,
    ) {
        let mut wait = Backoff::new(self.timeout);
        loop {
            for slot in sends.iter_mut().chain(receives.iter_mut()) {
                if let Some(request) = slot.take() {
                    *slot = request.test().err();
                }
            }
            let pending: Vec<usize> = receives
                .iter()
                .enumerate()
                .filter(|(_, r)| r.is_some())
                .map(|(i, _)| i)
                .collect();
            if pending.is_empty() && sends.iter().all(Option::is_none) {
                return;
            }
            if !wait.pause() {
                self.abort(&timeout(&pending), 3);
            }
        }
    }
}

impl Collective for MpiCollective {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }

    fn size(&self) -> usize {
        self.world.size() as usize
    }

    fn all_reduce_sum(&self, values: &mut [f32], what: &str) -> Result<(), CollectiveError> {
        let started = Instant::now();
        self.arrive(what);
        tracing::trace!(
            waited_s = started.elapsed().as_secs_f64(),
            "{what}: every rank arrived"
        );
        let mut send = vec![0.0f32; values.len().min(BUCKET)];
        for bucket in values.chunks_mut(BUCKET) {
            let send = &mut send[..bucket.len()];
            send.copy_from_slice(bucket);
            mpi::request::scope(|scope| {
                let mut request = Some(self.world.immediate_all_reduce_into(
                    scope,
                    &*send,
                    bucket,
                    SystemOperation::sum(),
                ));
                // Every rank has arrived: the sum is under way everywhere, and MPI moves
                // it on only inside its calls, so it is polled without pauses.
                let mut wait = Backoff::spinning(self.timeout);
                while let Some(pending) = request.take() {
                    request = pending.test().err();
                    if request.is_some() && !wait.pause() {
                        self.abort(&self.stalled(what), 3);
                    }
                }
            });
        }
        Ok(())
    }

    fn barrier(&self, what: &str) -> Result<(), CollectiveError> {
        self.arrive(what);
        Ok(())
    }

    fn gather_to_root(&self, bytes: &[u8], what: &str) -> Result<Vec<Vec<u8>>, CollectiveError> {
        self.arrive(what);
        // Point to point, in pieces: MPI counts in 32-bit integers, and a rank's
        // share of a large model's optimizer state is more than 2 GB.
        const PIECE: usize = 1 << 28;
        if self.rank() != 0 {
            let root = self.world.process_at_rank(0);
            root.send_with_tag(&(bytes.len() as u64), GATHER_TAG);
            for piece in bytes.chunks(PIECE) {
                root.send_with_tag(piece, GATHER_TAG);
            }
            return Ok(Vec::new());
        }
        let mut all = vec![bytes.to_vec()];
        for rank in 1..self.size() {
            let source = self.world.process_at_rank(rank as i32);
            let (len, _) = source.receive_with_tag::<u64>(GATHER_TAG);
            let mut received = vec![0u8; len as usize];
            for piece in received.chunks_mut(PIECE) {
                source.receive_into_with_tag(piece, GATHER_TAG);
            }
            all.push(received);
        }
        Ok(all)
    }
}

/// FNV-1a of an exchange's name: ranks at the same exchange send the same hash.
fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Polling up to a deadline, with pauses that grow from yielding the core to 1 ms
/// ([`Backoff::new`]: a rank waiting for a slower one should not take the core from
/// the kernels' threads) or none ([`Backoff::spinning`]: MPI moves a non-blocking
/// exchange on only inside its calls, so a pause between tests is time lost).
struct Backoff {
    started: Instant,
    deadline: Instant,
    pauses: bool,
}

impl Backoff {
    fn new(limit: Duration) -> Self {
        let started = Instant::now();
        Self {
            started,
            deadline: started + limit,
            pauses: true,
        }
    }

    fn spinning(limit: Duration) -> Self {
        Self {
            pauses: false,
            ..Self::new(limit)
        }
    }

    /// Pauses; false once the deadline has passed.
    fn pause(&mut self) -> bool {
        let waited = self.started.elapsed();
        if !self.pauses {
            std::hint::spin_loop();
        } else if waited < Duration::from_millis(1) {
            std::thread::yield_now();
        } else {
            std::thread::sleep((waited / 10).min(Duration::from_millis(1)));
        }
        Instant::now() < self.deadline
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_hash_apart() {
        assert_ne!(
            name_hash("the gradients of step 1"),
            name_hash("the gradients of step 2")
        );
        assert_eq!(name_hash(""), 0xcbf2_9ce4_8422_2325);
    }
}

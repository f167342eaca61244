//! The engine's worker threads, and how many of them each forward pass uses.
//!
//! One worker per core is fastest on a quiet machine and slowest on a busy one: every
//! loop in a pass ends when its last piece is done, and a worker the OS has preempted
//! holds the piece it took until it runs again, so each of a pass's hundreds of loops
//! may wait out a scheduler time slice. (On this 2-core machine with one core kept busy
//! by another process, decoding on 2 workers fell to half the rate of decoding on 1.)
//! So there are pools of every size from the configured count down by halves to one,
//! and each pass runs on the pool that has recently been fastest for passes of its size,
//! measured in seconds per row. One pass in `EXPLORE_EVERY` tries another pool instead,
//! because the load on the machine, and with it the best pool, changes.

use std::sync::{Mutex, OnceLock};
use std::time::Instant;

/// One pass in this many, per size class, runs on a pool other than the best.
const EXPLORE_EVERY: u64 = 16;
/// Weight of the newest timing in a pool's running figure.
const SMOOTHING: f64 = 0.25;
/// Passes are classed by the binary logarithm of their rows, up to this many classes.
const SIZE_CLASSES: usize = 12;

/// Runs `pass`, a forward pass over `rows` rows, on the pool chosen for passes of its
/// size, so the loops inside it split their work among that pool's workers.
pub fn on_workers<R: Send>(rows: usize, pass: impl FnOnce() -> R + Send) -> R {
    let Some(workers) = workers() else {
        return pass();
    };
    let class = size_class(rows);
    let pick = workers.lock().pick(class);
    let started = Instant::now();
    let result = workers.pools[pick].install(pass);
    let per_row = started.elapsed().as_secs_f64() / rows.max(1) as f64;
    workers.lock().record(class, pick, per_row);
    result
}

struct Workers {
    /// Largest first.
    pools: Vec<rayon::ThreadPool>,
    choice: Mutex<Choice>,
}

impl Workers {
    fn lock(&self) -> std::sync::MutexGuard<'_, Choice> {
        // A choice is a handful of numbers, consistent after any update.
        match self.choice.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

/// The pools, built on first use: `CANDLE_NUM_THREADS` workers at most (the variable
/// warden's `local.threads` sets), else one per core. `None` if none could be started:
/// rayon's shared pool stands in.
fn workers() -> Option<&'static Workers> {
    static WORKERS: OnceLock<Option<Workers>> = OnceLock::new();
    WORKERS
        .get_or_init(|| {
            let most = std::env::var("CANDLE_NUM_THREADS")
                .ok()
                .and_then(|n| n.parse::<usize>().ok())
                .filter(|&n| n > 0)
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
            let pools: Vec<rayon::ThreadPool> = pool_sizes(most)
                .into_iter()
                .filter_map(|threads| {
                    rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .thread_name(move |index| format!("warden-llama-{threads}-{index}"))
                        .build()
                        .ok()
                })
                .collect();
            (!pools.is_empty()).then(|| Workers {
                choice: Mutex::new(Choice::new(pools.len())),
                pools,
            })
        })
        .as_ref()
}

/// `most`, then halves of it down to one: a busy machine takes cores away a few at a
/// time, and halving reaches one in a few steps.
fn pool_sizes(most: usize) -> Vec<usize> {
    let mut sizes = vec![most.max(1)];
    while let Some(&last) = sizes.last().filter(|&&n| n > 1) {
        sizes.push(last / 2);
    }
    sizes
}

fn size_class(rows: usize) -> usize {
    (rows.max(1).ilog2() as usize).min(SIZE_CLASSES - 1)
}

/// What recent passes took on each pool, per size class.
struct Choice {
    classes: Vec<ClassTimings>,
}

struct ClassTimings {
    /// Seconds per row, smoothed, by pool; `None` until the pool has run one.
    per_row: Vec<Option<f64>>,
    passes: u64,
}

impl Choice {
    fn new(pools: usize) -> Self {
        Self {
            classes: (0..SIZE_CLASSES)
                .map(|_| ClassTimings {
                    per_row: vec![None; pools],
                    passes: 0,
                })
                .collect(),
        }
    }

    /// The pool for the next pass of `class`: each pool once, then the fastest, and
    /// every `EXPLORE_EVERY`th pass the others in turn.
    fn pick(&mut self, class: usize) -> usize {
        let timings = &mut self.classes[class];
        timings.passes += 1;
        if let Some(untried) = timings.per_row.iter().position(Option::is_none) {
            return untried;
        }
        let best = timings
            .per_row
            .iter()
            .enumerate()
            .min_by(|a, b| a.1.unwrap_or(f64::MAX).total_cmp(&b.1.unwrap_or(f64::MAX)))
            .map_or(0, |(index, _)| index);
        let pools = timings.per_row.len();
        if pools > 1 && timings.passes % EXPLORE_EVERY == 0 {
            let turn = (timings.passes / EXPLORE_EVERY) as usize % (pools - 1);
            return (best + 1 + turn) % pools;
        }
        best
    }

    fn record(&mut self, class: usize, pool: usize, per_row: f64) {
        let figure = &mut self.classes[class].per_row[pool];
        *figure = Some(match *figure {
            Some(old) => old + SMOOTHING * (per_row - old),
            None => per_row,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_halve_down_to_one() {
        assert_eq!(pool_sizes(1), [1]);
        assert_eq!(pool_sizes(2), [2, 1]);
        assert_eq!(pool_sizes(12), [12, 6, 3, 1]);
    }

    #[test]
    fn passes_are_classed_by_size() {
        assert_eq!(size_class(0), 0);
        assert_eq!(size_class(1), 0);
        assert_eq!(size_class(3), 1);
        assert_eq!(size_class(200), 7);
        assert_eq!(size_class(1 << 20), SIZE_CLASSES - 1);
    }

    #[test]
    fn each_pool_is_tried_then_the_fastest_runs_and_the_others_are_retried_now_and_then() {
        let mut choice = Choice::new(3);
        let mut picks = Vec::new();
        for _ in 0..3 {
            let pool = choice.pick(0);
            picks.push(pool);
            // Pool 1 is the fastest.
            choice.record(0, pool, [2.0, 1.0, 3.0][pool]);
        }
        assert_eq!(picks, [0, 1, 2]);
        let mut runs = [0; 3];
        let passes = 3 + 2 * EXPLORE_EVERY as usize * 2;
        for _ in 3..passes {
            runs[choice.pick(0)] += 1;
        }
        assert_eq!(runs, [2, passes - 3 - 4, 2]);
        // Another size class keeps its own figures.
        assert_eq!(choice.pick(5), 0);
    }

    #[test]
    fn a_pool_that_slows_down_loses_its_place() {
        let mut choice = Choice::new(2);
        for (pool, per_row) in [(0, 1.0), (1, 2.0)] {
            assert_eq!(choice.pick(0), pool);
            choice.record(0, pool, per_row);
        }
        // The machine gets busy: the large pool now takes 4x as long.
        for _ in 0..10 {
            let pool = choice.pick(0);
            choice.record(0, pool, [4.0, 2.0][pool]);
        }
        assert_eq!(choice.pick(0), 1);
    }

    #[test]
    fn a_panicking_pass_reaches_the_caller_and_the_workers_keep_working() {
        let outcome = std::panic::catch_unwind(|| on_workers(1, || panic!("in the pass")));
        assert!(outcome.is_err());
        assert_eq!(on_workers(1, || 7), 7);
    }
}

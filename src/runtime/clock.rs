//! Processing time for the runtime's timers: the wall clock in a real run, a manual clock that
//! only moves when told in `tributary test` (`{advance_clock: 2m}`). Windowed transforms read the
//! time and wait for their ticks through it, so a test drives the same code a real run does.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tributary_sdk::{InFlight, Work};

/// Which clock a run's timers follow.
#[derive(Clone, Default)]
pub enum Clock {
    #[default]
    Wall,
    Manual(Arc<ManualClock>),
}

impl Clock {
    /// A timer ticking every `every` (wall clock) or on each [`ManualClock::advance`].
    pub fn timer(&self, every: Duration) -> Timer {
        match self {
            Clock::Wall => {
                let mut interval = tokio::time::interval(every);
                interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                Timer::Wall { started: tokio::time::Instant::now(), interval }
            }
            Clock::Manual(clock) => {
                let (tx, rx) = mpsc::unbounded_channel();
                clock.subscribers.lock().expect("clock lock").push(tx);
                Timer::Manual { clock: clock.clone(), ticks: rx }
            }
        }
    }
}

/// A clock that starts at 0 and moves only by [`ManualClock::advance`]. Each tick it hands out
/// is work in flight until the timer's owner has handled it, so the caller can wait for the
/// consequences of moving time (windows closing) before it looks.
pub struct ManualClock {
    now_us: AtomicI64,
    in_flight: Arc<InFlight>,
    subscribers: Mutex<Vec<mpsc::UnboundedSender<Work>>>,
}

impl ManualClock {
    pub fn new(in_flight: Arc<InFlight>) -> Self {
        ManualClock { now_us: AtomicI64::new(0), in_flight, subscribers: Mutex::new(Vec::new()) }
    }

    /// Move time forward and tick every timer once.
    pub fn advance(&self, by: Duration) {
        self.now_us.fetch_add(by.as_micros() as i64, Ordering::AcqRel);
        let mut subscribers = self.subscribers.lock().expect("clock lock");
        subscribers.retain(|tx| tx.send(self.in_flight.begin()).is_ok());
    }

    fn now_us(&self) -> i64 {
        self.now_us.load(Ordering::Acquire)
    }
}

/// One component's view of processing time.
pub enum Timer {
    Wall { started: tokio::time::Instant, interval: tokio::time::Interval },
    Manual { clock: Arc<ManualClock>, ticks: mpsc::UnboundedReceiver<Work> },
}

impl Timer {
    /// Microseconds since the timer was made (wall clock) or since the manual clock's start.
    pub fn now_us(&self) -> i64 {
        match self {
            Timer::Wall { started, .. } => started.elapsed().as_micros() as i64,
            Timer::Manual { clock, .. } => clock.now_us(),
        }
    }

    /// The next tick; hold the returned guard until the tick has been handled.
    pub async fn tick(&mut self) -> Work {
        match self {
            Timer::Wall { interval, .. } => {
                interval.tick().await;
                Work::default()
            }
            Timer::Manual { ticks, .. } => match ticks.recv().await {
                Some(work) => work,
                None => std::future::pending().await,
            },
        }
    }
}

//! The NVML event thread of `fleet watch`: it blocks in NVML's event wait for critical Xid and
//! ECC events, keeps what arrives for the next reading, and wakes a reconcile at once
//! (docs/gpu-health.md). While nothing happens it sleeps inside the driver's wait (one wake-up a
//! second, to see that watch is stopping). When the driver goes away it opens NVML again, a
//! little later each time (at most every few seconds), and registers a new set.
//!
//! Without this thread (`fleet plan`, `apply`, `gpus`) the reader drains an event set of its own
//! at each reading instead (`nvml_reader.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use nvml_wrapper::Nvml;
use nvml_wrapper::bitmasks::event::EventTypes;
use nvml_wrapper::enums::event::XidError;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::struct_wrappers::event::EventData;

use super::gpu::{self, NvmlProblem};

/// How long one wait in the driver lasts: how soon the thread sees that watch stops.
const WAIT_MS: u32 = 1000;
/// The longest pause between two tries to open NVML while the driver is away.
const MOST_PAUSE: Duration = Duration::from_secs(5);

/// What arrived since the last reading took it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Drained {
    /// Xids by GPU UUID, in the order they arrived.
    pub xids: BTreeMap<String, Vec<u64>>,
    /// GPUs an uncorrectable ECC error event arrived for.
    pub ecc_events: BTreeSet<String>,
}

/// The thread's log: `Some` while a thread runs.
struct Log {
    drained: Drained,
    /// Why events cannot be seen now (the driver is away, no set could be made).
    blind: Option<String>,
}

static LOG: Mutex<Option<Log>> = Mutex::new(None);
/// Every Xid seen by this process, by GPU and Xid (the metrics' counters).
static XID_COUNTS: Mutex<BTreeMap<(String, u64), u64>> = Mutex::new(BTreeMap::new());

/// What woke a reconcile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuEvent {
    pub uuid: String,
    /// `Xid 79`, `an uncorrectable ECC error`, ...; the UUID is empty for `NVML answers
    /// again` (after the driver went away).
    pub what: String,
}

/// Whether an event thread runs in this process (the reader then takes its events).
pub fn active() -> bool {
    LOG.lock().unwrap_or_else(PoisonError::into_inner).is_some()
}

/// Takes what the thread saw since the last call; `Err` says why it sees nothing now.
pub fn take() -> Result<Drained, String> {
    let mut log = LOG.lock().unwrap_or_else(PoisonError::into_inner);
    match log.as_mut() {
        None => Err("no NVML event thread runs".to_string()),
        Some(log) => match &log.blind {
            Some(why) => Err(why.clone()),
            None => Ok(std::mem::take(&mut log.drained)),
        },
    }
}

/// Counts one Xid seen on a GPU (for `fleet_gpu_xid_errors_total`).
pub fn count_xid(uuid: &str, xid: u64) {
    *XID_COUNTS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .entry((uuid.to_string(), xid))
        .or_default() += 1;
}

/// Every Xid this process saw: (GPU UUID, Xid, how many times).
pub fn xid_counts() -> Vec<(String, u64, u64)> {
    XID_COUNTS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .map(|((uuid, xid), n)| (uuid.clone(), *xid, *n))
        .collect()
}

/// The running thread; [`EventThread::stop`] ends it (dropping it asks it to end too).
pub struct EventThread {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl EventThread {
    /// Starts the thread; `wake` is called (on the thread) for each event that arrives.
    pub fn start(wake: impl Fn(GpuEvent) + Send + 'static) -> Option<EventThread> {
        // Not blind while it starts: an event before its set exists is not delivered to any
        // set, as with a set made a moment later; a failure to make one says so.
        *LOG.lock().unwrap_or_else(PoisonError::into_inner) = Some(Log {
            drained: Drained::default(),
            blind: None,
        });
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let started = std::thread::Builder::new()
            .name("fleet-nvml-evts".into())
            .spawn(move || run(&flag, &wake));
        match started {
            Ok(handle) => Some(EventThread {
                stop,
                handle: Some(handle),
            }),
            Err(e) => {
                tracing::warn!(
                    "cannot start the NVML event thread ({e}): Xids are seen at each reconcile only"
                );
                *LOG.lock().unwrap_or_else(PoisonError::into_inner) = None;
                None
            }
        }
    }

    /// Ends the thread and waits for it (at most one wait in the driver, a second).
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }

    /// Whether the thread has ended.
    pub fn is_finished(&self) -> bool {
        self.handle.as_ref().is_none_or(JoinHandle::is_finished)
    }
}

impl Drop for EventThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        *LOG.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }
}

/// Says why events cannot be seen (`None`: they can); whether they could not before.
fn set_blind(why: Option<String>) -> bool {
    match LOG.lock().unwrap_or_else(PoisonError::into_inner).as_mut() {
        Some(log) => std::mem::replace(&mut log.blind, why).is_some(),
        None => false,
    }
}

/// Opens NVML, waits for events until the set fails or watch stops, and opens it again.
fn run(stop: &AtomicBool, wake: &dyn Fn(GpuEvent)) {
    let mut pause = Duration::from_millis(500);
    while !stop.load(Ordering::Relaxed) {
        match gpu::open() {
            Ok(nvml) => {
                if wait_for_events(&nvml, stop, wake) {
                    pause = Duration::from_millis(500);
                }
            }
            // No NVIDIA library here: nothing to watch, ever.
            Err(NvmlProblem::Absent(_)) => {
                set_blind(None);
                return;
            }
            Err(NvmlProblem::Failed(why)) => {
                set_blind(Some(format!(
                    "NVML cannot be opened ({why}), so Xid errors cannot be seen"
                )));
            }
        }
        sleep_unless_stopped(pause, stop);
        pause = (pause * 2).min(MOST_PAUSE);
    }
}

/// Waits on a new event set until it fails or watch stops; whether the set was made.
fn wait_for_events(nvml: &Nvml, stop: &AtomicBool, wake: &dyn Fn(GpuEvent)) -> bool {
    let Some(set) = super::nvml_reader::register(nvml) else {
        set_blind(Some(
            "NVML cannot register for Xid and ECC events on this machine".to_string(),
        ));
        return false;
    };
    let was_blind = set_blind(None);
    tracing::info!("NVML: waiting for Xid and ECC events");
    if was_blind {
        // The GPUs read unknown meanwhile: a reconcile now reads them again.
        wake(GpuEvent {
            uuid: String::new(),
            what: "NVML answers again".to_string(),
        });
    }
    while !stop.load(Ordering::Relaxed) {
        match set.wait(WAIT_MS) {
            Ok(event) => {
                if let Some(woken) = remember(&event) {
                    tracing::info!("NVML: {} on GPU {}", woken.what, woken.uuid);
                    wake(woken);
                }
            }
            Err(NvmlError::Timeout) => {}
            Err(e) => {
                tracing::warn!("NVML's event wait failed ({e}): opening NVML again");
                set_blind(Some(format!(
                    "NVML's event set failed ({e}), so Xid errors cannot be seen"
                )));
                break;
            }
        }
    }
    true
}

/// Keeps an event for the next reading; what it was, to log and wake a reconcile with.
fn remember(event: &EventData<'_>) -> Option<GpuEvent> {
    let Ok(uuid) = event.device.uuid() else {
        tracing::warn!("NVML delivered an event for a GPU whose UUID it cannot tell");
        return None;
    };
    let mut log = LOG.lock().unwrap_or_else(PoisonError::into_inner);
    let drained = &mut log.as_mut()?.drained;
    let mut what = None;
    if event.event_type.contains(EventTypes::DOUBLE_BIT_ECC_ERROR) {
        drained.ecc_events.insert(uuid.clone());
        what = Some("an uncorrectable ECC error".to_string());
    }
    if let Some(xid) = &event.event_data {
        let value = xid_value(xid);
        drained.xids.entry(uuid.clone()).or_default().push(value);
        count_xid(&uuid, value);
        what = Some(format!("Xid {value}"));
    }
    what.map(|what| GpuEvent { uuid, what })
}

/// An Xid's number; one NVML cannot tell is counted as 999 (critical unless listed).
pub fn xid_value(xid: &XidError) -> u64 {
    match xid {
        XidError::Value(v) => *v,
        XidError::Unknown => 999,
    }
}

fn sleep_unless_stopped(pause: Duration, stop: &AtomicBool) {
    let step = Duration::from_millis(100);
    let mut slept = Duration::ZERO;
    while slept < pause && !stop.load(Ordering::Relaxed) {
        std::thread::sleep(step);
        slept += step;
    }
}

//! The NVML reader: one thread of fleet's own that keeps NVML open with an event set for
//! critical Xid and ECC events, and reads this machine's GPUs and their health when asked.
//! NVML's calls block (a GPU in trouble can take seconds to answer), so they never run on the
//! async runtime; an observation asks once and awaits the answer, and the metrics reuse the
//! latest reading instead of calling NVML again (docs/gpu-health.md).
//!
//! The event set is what lets fleet see an Xid at all: the driver delivers events only to a
//! set that was registered when they happened. In a one-shot command the reader's own set is
//! drained at each reading (it costs nothing in between); under `fleet watch` the event thread
//! (`nvml_events.rs`) owns the set and the reader takes what it saw.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};

use nvml_wrapper::Nvml;
use nvml_wrapper::bitmasks::event::EventTypes;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::event::EventSet;
use nvml_wrapper::struct_wrappers::event::EventData;

use super::gpu::{self, NvmlProblem, NvmlReport};
use super::health::GpuSignals;

/// One reading of this machine's GPUs.
#[derive(Debug, Clone, Default)]
pub struct Reading {
    pub report: NvmlReport,
    /// Health signals of each readable GPU, by UUID.
    pub signals: BTreeMap<String, GpuSignals>,
}

/// What the reader answers.
pub type Answer = Result<Arc<Reading>, NvmlProblem>;

type Request = tokio::sync::oneshot::Sender<Answer>;

/// The process's NVML reader (started at its first use).
pub struct NvmlReader {
    requests: Mutex<mpsc::Sender<Request>>,
    latest: Mutex<Option<Answer>>,
}

/// The reader of this process.
pub fn reader() -> &'static NvmlReader {
    static READER: OnceLock<NvmlReader> = OnceLock::new();
    READER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Request>();
        let started = std::thread::Builder::new()
            .name("fleet-nvml".into())
            .spawn(move || serve(&rx));
        if let Err(e) = started {
            tracing::warn!("cannot start the NVML reader thread: {e}");
        }
        NvmlReader {
            requests: Mutex::new(tx),
            latest: Mutex::new(None),
        }
    })
}

impl NvmlReader {
    /// Reads every GPU and its health, off the async runtime.
    pub async fn read(&self) -> Answer {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let sent = self
            .requests
            .lock()
            .map_err(|_| failed("the NVML reader is poisoned"))?
            .send(tx);
        if sent.is_err() {
            return Err(failed("the NVML reader thread is not running"));
        }
        let answer = rx
            .await
            .unwrap_or_else(|_| Err(failed("the NVML reader thread stopped mid-read")));
        if let Ok(mut latest) = self.latest.lock() {
            *latest = Some(answer.clone());
        }
        answer
    }

    /// The latest reading, without calling NVML (the metrics after a reconcile).
    pub fn latest(&self) -> Option<Answer> {
        self.latest.lock().ok().and_then(|l| l.clone())
    }
}

fn failed(what: &str) -> NvmlProblem {
    NvmlProblem::Failed(what.to_string())
}

/// What the reader remembers between readings.
#[derive(Default)]
pub struct Memory {
    /// Xids delivered at the latest drain.
    fresh: BTreeMap<String, Vec<u64>>,
    /// GPUs an uncorrectable ECC event was delivered for at the latest drain.
    ecc_events: BTreeSet<String>,
    /// Correctable ECC count at the previous reading.
    corrected: BTreeMap<String, u64>,
}

/// The thread: opens NVML at the first request (again after a failure), answers each request
/// with a reading, and ends when the process drops the reader.
fn serve(requests: &mpsc::Receiver<Request>) {
    let mut memory = Memory::default();
    let mut next = None;
    loop {
        let request = match next.take() {
            Some(r) => r,
            None => match requests.recv() {
                Ok(r) => r,
                Err(_) => return,
            },
        };
        let nvml = match gpu::open() {
            Ok(nvml) => nvml,
            Err(problem) => {
                let _ = request.send(Err(problem));
                continue;
            }
        };
        // Under `fleet watch` the event thread waits on a set of its own: the reader takes
        // what it saw instead of competing with it for the events.
        let own = (!super::nvml_events::active()).then(|| register(&nvml));
        let mut request = request;
        loop {
            let events = match &own {
                Some(set) => Events::Own(set.as_ref()),
                None => Events::Thread,
            };
            let answer = read(&nvml, events, &mut memory);
            // The driver went away (or half-way): open NVML again at the next request.
            let reopen = answer.is_err();
            let _ = request.send(answer.map(Arc::new));
            if reopen {
                break;
            }
            match requests.recv() {
                Ok(r) => request = r,
                Err(_) => return,
            }
        }
        next = None;
    }
}

/// Where a reading's Xid and ECC events come from.
pub enum Events<'a, 'n> {
    /// A set of the reader's own, drained at each reading (`None`: none could be made).
    Own(Option<&'a EventSet<'n>>),
    /// `fleet watch`'s event thread (`nvml_events.rs`).
    Thread,
}

/// One reading: the devices, the events since the last one, each GPU's health signals.
pub fn read(
    nvml: &Nvml,
    events: Events<'_, '_>,
    memory: &mut Memory,
) -> Result<Reading, NvmlProblem> {
    let report = gpu::report_of(nvml)?;
    let drained: Result<(), String> = match events {
        Events::Own(Some(set)) => drain(set, memory)
            .map_err(|e| format!("NVML's event set failed ({e}), so Xid errors cannot be seen")),
        Events::Own(None) => {
            Err("NVML cannot register for Xid and ECC events on this machine".to_string())
        }
        Events::Thread => super::nvml_events::take().map(|d| {
            memory.fresh = d.xids;
            memory.ecc_events = d.ecc_events;
        }),
    };
    let mut signals = BTreeMap::new();
    for index in 0..nvml.device_count().unwrap_or(0) {
        let Ok(device) = nvml.device_by_index(index) else {
            continue;
        };
        let Ok(uuid) = device.uuid() else { continue };
        let mut s = gpu::health_signals(&device, &uuid);
        // What the set delivered since the previous reading: the quarantine record keeps a
        // critical one beyond it (docs/gpu-health.md).
        s.xids = memory.fresh.get(&uuid).cloned().unwrap_or_default();
        s.fresh_xids = s.xids.clone();
        s.ecc_error_event = memory.ecc_events.contains(&uuid);
        if let Some(now) = s.ecc_corrected_volatile {
            let before = memory.corrected.insert(uuid.clone(), now);
            s.ecc_corrected_rising = before.is_some_and(|b| now > b);
        }
        if let Err(why) = &drained {
            s.unreadable.push(why.clone());
        }
        signals.insert(uuid, s);
    }
    Ok(Reading { report, signals })
}

/// One reading with a set of its own (`fleet gpus`, outside any runtime): the events it sees
/// are those the driver delivers to a new set.
pub fn read_once() -> Result<Reading, NvmlProblem> {
    let nvml = gpu::open()?;
    let events = register(&nvml);
    read(&nvml, Events::Own(events.as_ref()), &mut Memory::default())
}

/// An event set for critical Xids and ECC errors on every GPU that supports them; `None` when
/// NVML cannot make one.
pub fn register(nvml: &Nvml) -> Option<EventSet<'_>> {
    let wanted = EventTypes::CRITICAL_XID_ERROR
        | EventTypes::DOUBLE_BIT_ECC_ERROR
        | EventTypes::SINGLE_BIT_ECC_ERROR;
    let mut set = match nvml.create_event_set() {
        Ok(set) => set,
        Err(e) => {
            tracing::warn!("NVML cannot make an event set ({e}): Xid errors will not be seen");
            return None;
        }
    };
    for index in 0..nvml.device_count().unwrap_or(0) {
        let Ok(device) = nvml.device_by_index(index) else {
            continue;
        };
        let supported = device.supported_event_types().unwrap_or(wanted);
        let types = wanted & supported;
        if types.is_empty() {
            continue;
        }
        set = match device.register_events(types, set) {
            Ok(set) => set,
            Err(e) => {
                tracing::warn!(
                    "NVML cannot watch GPU {index} for Xid and ECC events ({}): Xid errors will not be seen",
                    e.error
                );
                return None;
            }
        };
    }
    Some(set)
}

/// Takes every event waiting in the set (a wait of 0 ms returns at once).
fn drain(set: &EventSet<'_>, memory: &mut Memory) -> Result<(), NvmlError> {
    memory.fresh.clear();
    memory.ecc_events.clear();
    loop {
        match set.wait(0) {
            Ok(event) => remember(&event, memory),
            Err(NvmlError::Timeout) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

fn remember(event: &EventData<'_>, memory: &mut Memory) {
    let Ok(uuid) = event.device.uuid() else {
        tracing::warn!("NVML delivered an event for a GPU whose UUID it cannot tell");
        return;
    };
    if event.event_type.contains(EventTypes::DOUBLE_BIT_ECC_ERROR) {
        memory.ecc_events.insert(uuid.clone());
    }
    if let Some(xid) = &event.event_data {
        let value = super::nvml_events::xid_value(xid);
        super::nvml_events::count_xid(&uuid, value);
        memory.fresh.entry(uuid).or_default().push(value);
    }
}

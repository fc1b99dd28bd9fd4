//! Test-only capture of the log lines one test thread emits, for tests that check what is
//! (and is not) logged. It must not depend on which thread first meets a callsite.
//!
//! A thread-local subscriber (`tracing::subscriber::set_default`) is not enough while
//! other tests run in parallel: while it is the only live dispatcher, tracing-core
//! computes a new callsite's interest from the default of whichever thread meets the
//! callsite first, caches it for every thread, and a test thread without a subscriber
//! answers "never". The capturing thread then silently loses that event. So one global
//! subscriber is installed for the whole test binary; its filter answers "sometimes" for
//! every callsite, which tracing does not cache, and decides per event by whether the
//! emitting thread is capturing.

use std::cell::RefCell;
use std::sync::{Arc, Mutex, OnceLock};

use tracing::subscriber::Interest;
use tracing_subscriber::filter::{LevelFilter, dynamic_filter_fn};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::{Layer, Registry};

thread_local! {
    /// Where this thread's events go while it captures.
    static SINK: RefCell<Option<Buffer>> = const { RefCell::new(None) };
}

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Buffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut buffer) = self.0.lock() {
            buffer.extend_from_slice(bytes);
        }
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Writes to the emitting thread's sink, or nowhere.
struct ThreadSink;

impl<'a> MakeWriter<'a> for ThreadSink {
    type Writer = Box<dyn std::io::Write + 'a>;
    fn make_writer(&'a self) -> Self::Writer {
        match SINK.with(|sink| sink.borrow().clone()) {
            Some(buffer) => Box::new(buffer),
            None => Box::new(std::io::sink()),
        }
    }
}

fn capturing() -> bool {
    SINK.with(|sink| sink.borrow().is_some())
}

fn install() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let debug_and_up = |level: &tracing::Level| *level <= tracing::Level::DEBUG;
        let filter = dynamic_filter_fn(move |meta, _| debug_and_up(meta.level()) && capturing())
            .with_max_level_hint(LevelFilter::DEBUG)
            .with_callsite_filter(move |meta| {
                if debug_and_up(meta.level()) {
                    Interest::sometimes()
                } else {
                    Interest::never()
                }
            });
        let layer = tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(ThreadSink)
            .with_filter(filter);
        tracing::subscriber::set_global_default(Registry::default().with(layer))
            .expect("no other global subscriber in the unit tests");
    });
}

/// Captures this thread's events (debug and up) until dropped.
pub(crate) struct Capture {
    buffer: Buffer,
}

impl Capture {
    pub(crate) fn start() -> Capture {
        install();
        let buffer = Buffer::default();
        SINK.with(|sink| *sink.borrow_mut() = Some(buffer.clone()));
        Capture { buffer }
    }

    /// Everything captured so far, as text.
    pub(crate) fn text(&self) -> String {
        let bytes = self.buffer.0.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        SINK.with(|sink| *sink.borrow_mut() = None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A callsite no other test meets.
    fn probe(n: u32) {
        tracing::warn!(n, "log capture probe");
    }

    #[test]
    fn a_callsite_another_thread_met_first_is_still_captured() {
        let capture = Capture::start();
        // The first to meet the callsite is a thread that does not capture: with a
        // thread-local subscriber this cached "never" and the next line was lost.
        std::thread::spawn(|| probe(1))
            .join()
            .expect("probe thread");
        probe(2);
        tracing::trace!("below debug");
        let log = capture.text();
        assert!(log.contains("log capture probe n=2"), "{log:?}");
        assert!(!log.contains("n=1"), "another thread's event: {log:?}");
        assert!(!log.contains("below debug"), "{log:?}");
        drop(capture);
        probe(3);
        let after = Capture::start();
        probe(4);
        let log = after.text();
        assert!(log.contains("n=4") && !log.contains("n=3"), "{log:?}");
    }
}

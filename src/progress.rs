//! A progress line on a terminal for long work; silence otherwise.

use crate::store::push::Counters;
use indicatif::{HumanBytes, ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub struct PushProgress {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl PushProgress {
    /// Starts a display thread when stderr is a terminal.
    pub fn start(counters: Arc<Counters>) -> PushProgress {
        let stop = Arc::new(AtomicBool::new(false));
        if !std::io::stderr().is_terminal() {
            return PushProgress { stop, handle: None };
        }
        let s = stop.clone();
        let handle = std::thread::spawn(move || {
            let bar = ProgressBar::new_spinner();
            bar.set_style(ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}").expect("valid template"));
            while !s.load(Ordering::Relaxed) {
                let g = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
                bar.set_message(format!(
                    "{} files, {} read, {} new, {} uploaded",
                    g(&counters.files),
                    HumanBytes(g(&counters.bytes_read)),
                    HumanBytes(g(&counters.bytes_new)),
                    HumanBytes(g(&counters.bytes_uploaded)),
                ));
                bar.tick();
                std::thread::sleep(Duration::from_millis(150));
            }
            bar.finish_and_clear();
        });
        PushProgress { stop, handle: Some(handle) }
    }
}

impl Drop for PushProgress {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

//! The log writer behind stderr: lines are appended to one mutex-guarded buffer by the thread
//! that logs, and a flusher thread writes the whole buffer out every `interval` (50 ms for the
//! gate). A request's access-log line therefore costs a memcpy under an uncontended lock: no
//! `write(2)` and no cross-thread wake-up per line, which is what the per-line non-blocking
//! writer cost (about 10 % of the gate's CPU in context switches, PITFALLS "Profiling here").
//!
//! Bounded: the buffer never grows past `capacity`. A line that does not fit makes the logging
//! thread write the buffer and the line out itself, synchronously, as nginx's `access_log
//! buffer=` does. Nothing is dropped (an access log is an audit trail); under a log flood the
//! cost is one `write(2)` per `capacity` bytes on the logging thread, and a stderr that blocks
//! slows the gate rather than losing lines. Lines keep their order: every write to the output
//! happens under one lock, which is taken before the buffer's.
//!
//! No line is lost at exit: dropping the [`Guard`] flushes, and [`flush_process_log`] flushes the
//! writer installed for the process from paths that end in `std::process::exit` (the SIGTERM
//! drain), where no destructor runs.

use std::io::{self, Write};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

/// How often the flusher writes what has gathered: short enough that `tail -f` feels live and a
/// hard kill loses little, long enough that a busy gate writes hundreds of lines per syscall.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(50);
/// The buffer's bound: at ~30k lines/s of ~150 bytes a 50 ms interval gathers ~225 KiB, so 1 MiB
/// leaves the flusher, not the logging thread, doing the writing even through bursts four times
/// that rate. Its pages are only touched as lines fill them (two such buffers: the one being
/// filled and the one being written).
pub const CAPACITY: usize = 1024 * 1024;

/// The output side: the sink and a spare buffer swapped with the shared one, so flushing
/// allocates nothing once both have grown.
struct Out<W> {
    sink: W,
    spare: Vec<u8>,
}

struct Shared<W> {
    /// Lock order: `out` before `buf`, always.
    out: Mutex<Out<W>>,
    buf: Mutex<Vec<u8>>,
    capacity: usize,
}

/// A poisoned lock only means another thread panicked while logging; the bytes are still
/// there and logging must go on.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<W: Write> Shared<W> {
    /// Writes out everything buffered so far. Write errors are ignored: there is nowhere left
    /// to report a failing stderr.
    fn flush(&self) {
        let mut out = lock(&self.out);
        let Out { sink, spare } = &mut *out;
        {
            let mut buf = lock(&self.buf);
            if buf.is_empty() {
                return;
            }
            std::mem::swap(&mut *buf, spare);
        }
        let _ = sink.write_all(spare);
        let _ = sink.flush();
        spare.clear();
    }

    fn append(&self, line: &[u8]) {
        {
            let mut buf = lock(&self.buf);
            if buf.len() + line.len() <= self.capacity {
                buf.extend_from_slice(line);
                return;
            }
        }
        // Full: write out what is buffered, then this line, from this thread. Taking `out`
        // first keeps the order with the flusher, and lines other threads appended meanwhile
        // are written before this one.
        let mut out = lock(&self.out);
        let Out { sink, spare } = &mut *out;
        std::mem::swap(&mut *lock(&self.buf), spare);
        let _ = sink.write_all(spare);
        let _ = sink.write_all(line);
        let _ = sink.flush();
        spare.clear();
    }
}

/// Object-safe view of [`Shared`] for the process-wide flush and for [`LineSink`].
trait Flush: Send + Sync {
    fn flush(&self);
    fn append(&self, line: &[u8]);
}

impl<W: Write + Send> Flush for Shared<W> {
    fn flush(&self) {
        Shared::flush(self);
    }
    fn append(&self, line: &[u8]) {
        Shared::append(self, line);
    }
}

/// A handle that appends whole, already formatted lines to a writer's buffer, whatever its
/// sink's type: what the access log's own formatter ([`crate::accesslog`]) writes through.
#[derive(Clone)]
pub struct LineSink(Arc<dyn Flush>);

impl LineSink {
    pub fn append(&self, line: &[u8]) {
        self.0.append(line);
    }
}

/// The writer handed to `tracing_subscriber::fmt().with_writer(..)`; cheap to clone.
pub struct LogWriter<W> {
    shared: Arc<Shared<W>>,
}

impl<W> Clone for LogWriter<W> {
    fn clone(&self) -> Self {
        LogWriter {
            shared: Arc::clone(&self.shared),
        }
    }
}

/// Keeps the flusher running; dropping it stops the flusher and writes out the last lines.
pub struct Guard {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    flush: Arc<dyn Flush>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        // Dropping the sender wakes the flusher at once (Disconnected).
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.flush.flush();
    }
}

impl<W: Write + Send + 'static> LogWriter<W> {
    /// A writer to `sink` with its flusher thread, flushing every `interval` and buffering at
    /// most `capacity` bytes.
    pub fn spawn(sink: W, interval: Duration, capacity: usize) -> io::Result<(Self, Guard)> {
        let shared = Arc::new(Shared {
            out: Mutex::new(Out {
                sink,
                spare: Vec::with_capacity(capacity),
            }),
            buf: Mutex::new(Vec::with_capacity(capacity)),
            capacity,
        });
        let (stop, stopped) = mpsc::channel::<()>();
        let flusher = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("log-flush".into())
            .spawn(move || {
                // A message or a dropped sender is the guard asking to stop.
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(interval) {
                    flusher.flush();
                }
                flusher.flush();
            })?;
        let flush: Arc<dyn Flush> = shared.clone();
        Ok((
            LogWriter { shared },
            Guard {
                stop: Some(stop),
                thread: Some(thread),
                flush,
            },
        ))
    }

    /// Writes out everything buffered so far, now.
    pub fn flush_now(&self) {
        self.shared.flush();
    }

    /// A type-erased handle appending to this writer's buffer.
    pub fn line_sink(&self) -> LineSink {
        LineSink(self.shared.clone())
    }
}

static PROCESS_LOG: OnceLock<Arc<dyn Flush>> = OnceLock::new();

impl Guard {
    /// Makes this the writer [`flush_process_log`] flushes. The first call wins: a process has
    /// one stderr.
    pub fn install_for_process(&self) {
        let _ = PROCESS_LOG.set(Arc::clone(&self.flush));
    }
}

/// Flushes the process's log writer, if one was installed: for exits that skip destructors.
pub fn flush_process_log() {
    if let Some(f) = PROCESS_LOG.get() {
        f.flush();
    }
}

impl<W: Write> Write for LogWriter<W> {
    /// tracing-subscriber formats each event into its own buffer and hands it over in one
    /// `write_all`, so a call is a whole line.
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        self.shared.append(line);
        Ok(line.len())
    }

    /// Buffered lines go out on the flusher's schedule; an explicit flush per line is exactly
    /// the syscall this writer exists to avoid.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a, W: Write + 'static> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter<W> {
    type Writer = LogWriter<W>;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// A sink that records what it got and how many `write` calls it took.
    #[derive(Clone, Default)]
    struct Sink {
        bytes: Arc<Mutex<Vec<u8>>>,
        writes: Arc<Mutex<usize>>,
    }

    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            lock(&self.bytes).extend_from_slice(b);
            *lock(&self.writes) += 1;
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Sink {
        fn text(&self) -> String {
            String::from_utf8_lossy(&lock(&self.bytes)).into_owned()
        }
        fn writes(&self) -> usize {
            *lock(&self.writes)
        }
    }

    const LONG: Duration = Duration::from_secs(3600);

    #[test]
    fn lines_are_buffered_not_written_one_by_one() {
        let sink = Sink::default();
        let (mut w, guard) = LogWriter::spawn(sink.clone(), LONG, 1 << 20).expect("spawn");
        for i in 0..1000 {
            w.write_all(format!("line {i}\n").as_bytes())
                .expect("write");
        }
        assert_eq!(sink.writes(), 0, "nothing reaches the sink before a flush");
        w.flush_now();
        assert_eq!(sink.writes(), 1, "one write for the whole batch");
        assert!(sink.text().starts_with("line 0\nline 1\n"));
        assert!(sink.text().ends_with("line 999\n"));
        drop(guard);
    }

    #[test]
    fn the_flusher_writes_on_its_interval() {
        let sink = Sink::default();
        let (mut w, _guard) =
            LogWriter::spawn(sink.clone(), Duration::from_millis(20), 1 << 20).expect("spawn");
        w.write_all(b"hello\n").expect("write");
        let deadline = Instant::now() + Duration::from_secs(5);
        while sink.text().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(sink.text(), "hello\n");
    }

    #[test]
    fn an_idle_writer_makes_no_writes() {
        let sink = Sink::default();
        let (_w, guard) =
            LogWriter::spawn(sink.clone(), Duration::from_millis(5), 1024).expect("spawn");
        std::thread::sleep(Duration::from_millis(60));
        drop(guard);
        assert_eq!(sink.writes(), 0);
    }

    #[test]
    fn a_full_buffer_is_written_synchronously_in_order_and_nothing_is_lost() {
        let sink = Sink::default();
        let (mut w, guard) = LogWriter::spawn(sink.clone(), LONG, 64).expect("spawn");
        let mut expected = String::new();
        for i in 0..100 {
            let line = format!("a fairly long line number {i:03}\n");
            w.write_all(line.as_bytes()).expect("write");
            expected.push_str(&line);
            assert!(lock(&w.shared.buf).len() <= 64, "the buffer stays bounded");
        }
        assert!(
            sink.writes() > 0,
            "overflow wrote without waiting for the flusher"
        );
        drop(guard);
        assert_eq!(sink.text(), expected);
    }

    #[test]
    fn a_line_larger_than_the_buffer_still_goes_out_whole() {
        let sink = Sink::default();
        let (mut w, guard) = LogWriter::spawn(sink.clone(), LONG, 8).expect("spawn");
        w.write_all(b"ab\n").expect("write");
        w.write_all(b"a line of more than eight bytes\n")
            .expect("write");
        drop(guard);
        assert_eq!(sink.text(), "ab\na line of more than eight bytes\n");
    }

    #[test]
    fn dropping_the_guard_flushes_lines_from_every_thread() {
        let sink = Sink::default();
        let (w, guard) = LogWriter::spawn(sink.clone(), LONG, 1 << 20).expect("spawn");
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let mut w = w.clone();
                std::thread::spawn(move || {
                    for i in 0..250 {
                        w.write_all(format!("{t}:{i}\n").as_bytes()).expect("write");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("join");
        }
        drop(guard);
        let text = sink.text();
        assert_eq!(text.lines().count(), 1000);
        for t in 0..4 {
            // Each thread's lines keep their order.
            let mine: Vec<usize> = text
                .lines()
                .filter_map(|l| l.strip_prefix(&format!("{t}:")))
                .filter_map(|n| n.parse().ok())
                .collect();
            assert_eq!(mine, (0..250).collect::<Vec<_>>());
        }
    }

    #[test]
    fn tracing_events_arrive_through_the_writer() {
        let sink = Sink::default();
        let (w, guard) = LogWriter::spawn(sink.clone(), LONG, 1 << 20).expect("spawn");
        let subscriber = tracing_subscriber::fmt()
            .with_writer(w)
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(route = "public", status = 200, "request");
            tracing::info!(route = "echo", status = 401, "request");
        });
        drop(guard);
        let text = sink.text();
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(text.contains("route=\"public\" status=200"), "{text}");
        assert_eq!(sink.writes(), 1);
    }
}

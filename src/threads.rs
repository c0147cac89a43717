//! Threads the library starts, counted per owner.
//!
//! Every thread is started here (clippy's `disallowed_methods` refuses
//! `std::thread::spawn` and `Builder::spawn` elsewhere in the library): a
//! thread that works for one owner (a transport, a server, a keeper, a
//! reporter) is counted by that owner's [`ThreadCount`] from its spawn until
//! its body returns; the few that belong to the whole process (the soft
//! fabric's executor, the graceful-shutdown watcher) by none. So
//! `TransferEngine::threads` (and `TcpTransport::threads`, ...) say how many
//! threads an engine owns, whatever else runs in the process (tests in one
//! binary run in parallel and start and stop their own).

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// The threads one owner has running; clones share the count. A count made
/// by [`ThreadCount::child`] also counts in its parent's, so an engine's count
/// holds its transports' and its metadata's threads, and still does after they
/// were shut down and dropped.
#[derive(Clone, Debug, Default)]
pub struct ThreadCount(Arc<Node>);

#[derive(Debug, Default)]
struct Node {
    running: AtomicUsize,
    parent: Option<ThreadCount>,
}

/// Held by a counted thread: leaves the counts when its body returns or
/// unwinds (or, if the thread never started, when the refused closure is
/// dropped).
struct Running(ThreadCount);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.each(|r| {
            r.fetch_sub(1, Ordering::AcqRel);
        });
    }
}

impl ThreadCount {
    /// A count for a part of this owner: its threads count in both.
    pub fn child(&self) -> ThreadCount {
        ThreadCount(Arc::new(Node {
            running: AtomicUsize::new(0),
            parent: Some(self.clone()),
        }))
    }

    /// Start a thread named `name` that this count (and its parents') holds
    /// until `f` returns.
    pub fn spawn<F, T>(&self, name: impl Into<String>, f: F) -> io::Result<JoinHandle<T>>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        self.each(|r| {
            r.fetch_add(1, Ordering::AcqRel);
        });
        let running = Running(self.clone());
        start(name.into(), move || {
            let _running = running;
            f()
        })
    }

    /// Threads started through this count or a child of it whose body has
    /// not returned.
    pub fn running(&self) -> usize {
        self.0.running.load(Ordering::Acquire)
    }

    fn each(&self, f: impl Fn(&AtomicUsize)) {
        let mut c = Some(self);
        while let Some(ThreadCount(n)) = c {
            f(&n.running);
            c = n.parent.as_ref();
        }
    }
}

/// Start a thread that belongs to the process, not to an engine: no owner
/// counts it.
pub fn spawn_process_wide<F, T>(name: impl Into<String>, f: F) -> io::Result<JoinHandle<T>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    start(name.into(), f)
}

#[allow(clippy::disallowed_methods)] // the one place threads start
fn start<F, T>(name: String, f: F) -> io::Result<JoinHandle<T>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    std::thread::Builder::new().name(name).spawn(f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn a_thread_is_counted_from_its_spawn_until_its_body_returns() {
        let count = ThreadCount::default();
        let (go, wait) = mpsc::channel::<()>();
        let h = count
            .spawn("te-test", move || wait.recv().unwrap())
            .unwrap();
        assert_eq!(count.running(), 1);
        let h2 = count
            .clone()
            .spawn("te-test", || panic!("unwinds"))
            .unwrap();
        assert!(h2.join().is_err());
        assert_eq!(count.running(), 1, "a panicking thread leaves the count");
        go.send(()).unwrap();
        h.join().unwrap();
        assert_eq!(count.running(), 0);
    }

    #[test]
    fn a_child_counts_in_its_parent_too() {
        let parent = ThreadCount::default();
        let child = parent.child();
        let (go, wait) = mpsc::channel::<()>();
        let h = child
            .spawn("te-test", move || wait.recv().unwrap())
            .unwrap();
        assert_eq!((parent.running(), child.running()), (1, 1));
        drop(child);
        go.send(()).unwrap();
        h.join().unwrap();
        assert_eq!(parent.running(), 0);
    }
}

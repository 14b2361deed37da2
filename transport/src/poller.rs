//! The reactor's epoll instance: oneshot registrations, a wake-up, and waits with a timeout.
//!
//! This replaced `polling::Poller`, whose Linux `wait` costs five system calls (it arms a
//! timerfd and re-registers it, waits, then drains and re-registers its notifier eventfd) where
//! one does: `epoll_pwait` takes the timeout itself (rustix uses `epoll_pwait2` when the
//! timeout needs it), and the eventfd here stays registered, level-triggered, and is only read
//! in the wait that reports it. A flag makes `notify` write at most once per wait. Under a load
//! of short connections the reactor waits every two or three events, so those four calls were
//! a system call per connection.
//!
//! Watches register oneshot (an event disarms the descriptor until it is modified again);
//! connections and listeners register level-triggered and change their registration only when
//! what they want changes, so a request/response connection costs no `epoll_ctl` per request
//! and a listener none per batch of accepts. The
//! kernel reports errors and hang-ups even to a registration with no interest, so "no interest"
//! is always registered oneshot (see the watch's `parked` and the connection's `armed`). A
//! registration can also start out deferred (`Registration::deferred`): the descriptor joins
//! the epoll set at its first `set`, and one closed before that never joins it.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::time::Duration;

use rustix::event::epoll::{self, EventData, EventFlags};
use rustix::event::{eventfd, EventfdFlags, Timespec};
use rustix::io::Errno;

/// The key the wake-up eventfd is registered under; never a slab key.
const NOTIFY_KEY: u64 = u64::MAX;

/// Interest in (when registering) or readiness of (when reported) one source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Event {
    pub(crate) key: usize,
    pub(crate) readable: bool,
    pub(crate) writable: bool,
}

impl Event {
    pub(crate) fn readable(key: usize) -> Event {
        Event { key, readable: true, writable: false }
    }
    pub(crate) fn writable(key: usize) -> Event {
        Event { key, readable: false, writable: true }
    }
    pub(crate) fn all(key: usize) -> Event {
        Event { key, readable: true, writable: true }
    }
    pub(crate) fn none(key: usize) -> Event {
        Event { key, readable: false, writable: false }
    }

    fn flags(self, mode: Mode) -> EventFlags {
        let mut flags = match mode {
            Mode::Oneshot => EventFlags::ONESHOT,
            Mode::Level => EventFlags::empty(),
        };
        if self.readable {
            flags |= EventFlags::IN | EventFlags::PRI | EventFlags::HUP | EventFlags::ERR;
        }
        if self.writable {
            flags |= EventFlags::OUT | EventFlags::HUP | EventFlags::ERR;
        }
        flags
    }
}

/// How a registration reports readiness.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Once, then the descriptor is disarmed until modified again.
    Oneshot,
    /// In every wait while the descriptor is ready (the registrant consumes the readiness on
    /// the reactor thread before the next wait, so nothing is reported twice).
    Level,
}

/// A level-triggered registration that changes only when its interest does, shared by
/// connections and listeners (a request, or a batch of accepts, then costs no `epoll_ctl`).
/// Interest in nothing is registered oneshot: errors and hang-ups are reported whatever the
/// interest, and level-triggered they would be reported in every wait.
#[derive(Debug)]
pub(crate) struct Registration {
    /// The live interest as `(readable, writable)`; `None` once a oneshot "nothing" has fired
    /// and the descriptor is disarmed (or before it is added).
    live: Option<(bool, bool)>,
    /// Whether the descriptor is in the epoll set yet (see [`Registration::deferred`]).
    added: bool,
}

const NOTHING: (bool, bool) = (false, false);

impl Registration {
    /// Registers `fd` with `interest`.
    pub(crate) fn add(poller: &Poller, fd: BorrowedFd<'_>, interest: Event) -> io::Result<Registration> {
        poller.add(fd, interest, Self::mode(interest))?;
        Ok(Registration { live: Some((interest.readable, interest.writable)), added: true })
    }

    /// A registration whose descriptor is added by the first [`Registration::set`]: a
    /// connection answered and closed before that costs no `epoll_ctl` at all.
    pub(crate) fn deferred() -> Registration {
        Registration { live: None, added: false }
    }

    /// Whether the descriptor is in the epoll set (and must leave it before it is closed).
    pub(crate) fn is_added(&self) -> bool {
        self.added
    }

    /// Notes that an event was reported: a oneshot "nothing" is disarmed by it. Call it first
    /// thing in the source's event handler.
    pub(crate) fn fired(&mut self) {
        if self.live == Some(NOTHING) {
            self.live = None;
        }
    }

    /// Makes `want` the registration, with no system call when it already is (or when it is
    /// "nothing" and the descriptor is disarmed anyway).
    pub(crate) fn set(&mut self, poller: &Poller, fd: BorrowedFd<'_>, want: Event) -> io::Result<()> {
        let wanted = (want.readable, want.writable);
        if !self.added {
            // Even for "nothing" (oneshot): errors and hang-ups are reported from now on.
            poller.add(fd, want, Self::mode(want))?;
            self.added = true;
            self.live = Some(wanted);
            return Ok(());
        }
        if self.live == Some(wanted) || (wanted == NOTHING && self.live.is_none()) {
            return Ok(());
        }
        poller.modify(fd, want, Self::mode(want))?;
        self.live = Some(wanted);
        Ok(())
    }

    fn mode(interest: Event) -> Mode {
        if interest.readable || interest.writable {
            Mode::Level
        } else {
            Mode::Oneshot
        }
    }
}

/// Events reported by one [`Poller::wait`].
pub(crate) struct Events {
    list: Vec<epoll::Event>,
}

impl Events {
    pub(crate) fn new() -> Events {
        Events { list: Vec::with_capacity(1024) }
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = Event> + '_ {
        self.list.iter().filter(|e| e.data.u64() != NOTIFY_KEY).map(|e| {
            let flags = e.flags;
            Event {
                key: e.data.u64() as usize,
                readable: flags.intersects(
                    EventFlags::IN | EventFlags::PRI | EventFlags::HUP | EventFlags::ERR | EventFlags::RDHUP,
                ),
                writable: flags.intersects(EventFlags::OUT | EventFlags::HUP | EventFlags::ERR),
            }
        })
    }
}

pub(crate) struct Poller {
    epoll: OwnedFd,
    wake: OwnedFd,
    /// A wake-up is written and not yet read: later `notify` calls need not write.
    woken: AtomicBool,
}

impl Poller {
    pub(crate) fn new() -> io::Result<Poller> {
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        let wake = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
        epoll::add(&epoll, &wake, EventData::new_u64(NOTIFY_KEY), EventFlags::IN)?;
        Ok(Poller { epoll, wake, woken: AtomicBool::new(false) })
    }

    /// Registers `fd` under `interest.key`. The caller deletes it before closing it.
    pub(crate) fn add(&self, fd: BorrowedFd<'_>, interest: Event, mode: Mode) -> io::Result<()> {
        Ok(epoll::add(&self.epoll, fd, EventData::new_u64(interest.key as u64), interest.flags(mode))?)
    }

    /// Changes (or re-arms) `fd`'s registration.
    pub(crate) fn modify(&self, fd: BorrowedFd<'_>, interest: Event, mode: Mode) -> io::Result<()> {
        Ok(epoll::modify(&self.epoll, fd, EventData::new_u64(interest.key as u64), interest.flags(mode))?)
    }

    pub(crate) fn delete(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        Ok(epoll::delete(&self.epoll, fd)?)
    }

    /// Waits for events, a [`Poller::notify`], or the timeout (`None`: no timeout).
    pub(crate) fn wait(&self, events: &mut Events, timeout: Option<Duration>) -> io::Result<()> {
        events.list.clear();
        // At most an hour: a longer timeout does not fit epoll_wait's milliseconds, and rustix
        // would then need epoll_pwait2, which kernels before 5.11 lack. (A waker comes sooner.)
        let timeout = timeout.map(|t| t.min(Duration::from_secs(3600))).map(|t| Timespec {
            tv_sec: t.as_secs().min(i64::MAX as u64) as i64,
            tv_nsec: i64::from(t.subsec_nanos()),
        });
        match epoll::wait(&self.epoll, rustix::buffer::spare_capacity(&mut events.list), timeout.as_ref()) {
            Ok(_) => {}
            Err(Errno::INTR) => return Err(io::ErrorKind::Interrupted.into()),
            Err(e) => return Err(e.into()),
        }
        if events.list.iter().any(|e| e.data.u64() == NOTIFY_KEY) {
            // Drain, then clear the flag. The other order loses wake-ups: a notify between the
            // two would see the flag clear, write, and have its write drained, leaving the flag
            // set with nothing to read, so every later notify would skip its write. This way a
            // notify that skips (flag still set) is one whose work was queued before it, and the
            // reactor looks at its queues after every wait.
            let mut count = [0u8; 8];
            let _ = rustix::io::read(&self.wake, &mut count);
            self.woken.store(false, SeqCst);
        }
        Ok(())
    }

    /// Makes the current or next [`Poller::wait`] return.
    pub(crate) fn notify(&self) -> io::Result<()> {
        if self.woken.swap(true, SeqCst) {
            return Ok(());
        }
        match rustix::io::write(&self.wake, &1u64.to_ne_bytes()) {
            // EAGAIN: the counter is saturated, so a wake-up is pending anyway.
            Ok(_) | Err(Errno::AGAIN) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

impl AsFd for Poller {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.epoll.as_fd()
    }
}

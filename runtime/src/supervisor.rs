//! Supervisors in Erlang/OTP's vocabulary: strategies, restart types, restart intensity.
//!
//! A supervised actor is restarted *in place*: its mailbox and every address handed out stay
//! valid, and a fresh instance built by the child's factory handles the messages that were
//! waiting. When restarts come more often than the [`Intensity`] allows, the supervisor stops
//! all its children and exits with [`ExitReason::Escalated`], which its own monitors (or its
//! own supervisor) see as a [`Down`].

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::actor::{Actor, Context, Down, ExitReason};
use crate::address::{ActorId, Addr};
use crate::cell::{Control, Signal, Supervision};
use crate::mailbox::Mailbox;
use crate::runtime::{Placement, RuntimeShared, SpawnError, SpawnOptions};

/// Which children restart when one exits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// Only the child that exited.
    OneForOne,
    /// Every child.
    OneForAll,
    /// The child that exited and every child started after it.
    RestForOne,
}

/// When a child is restarted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Restart {
    /// Always, whatever the reason it exited.
    Permanent,
    /// Only after an abnormal exit (a panic).
    Transient,
    /// Never.
    Temporary,
}

impl Restart {
    pub(crate) fn restarts_after(self, reason: &ExitReason) -> bool {
        match self {
            Restart::Permanent => true,
            Restart::Transient => reason.is_abnormal(),
            Restart::Temporary => false,
        }
    }
}

/// At most `max_restarts` restarts within any `period`; one more escalates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Intensity {
    /// Restarts allowed within the period.
    pub max_restarts: u32,
    /// The sliding window.
    pub period: Duration,
}

impl Default for Intensity {
    /// OTP's default: 1 restart in 5 seconds.
    fn default() -> Self {
        Intensity { max_restarts: 1, period: Duration::from_secs(5) }
    }
}

/// How to build and run one child.
pub struct ChildSpec<A: Actor> {
    factory: Box<dyn FnMut() -> A + Send>,
    restart: Restart,
    mailbox: Mailbox,
    placement: Placement,
}

impl<A: Actor> ChildSpec<A> {
    /// A permanent pool child with the default mailbox, built (and rebuilt) by `factory`.
    pub fn new(factory: impl FnMut() -> A + Send + 'static) -> Self {
        ChildSpec {
            factory: Box::new(factory),
            restart: Restart::Permanent,
            mailbox: Mailbox::DEFAULT,
            placement: Placement::Pool,
        }
    }

    /// Sets the restart type.
    pub fn restart(mut self, restart: Restart) -> Self {
        self.restart = restart;
        self
    }

    /// Sets the mailbox.
    pub fn mailbox(mut self, mailbox: Mailbox) -> Self {
        self.mailbox = mailbox;
        self
    }

    /// Runs the child on a dedicated thread (for blocking work).
    pub fn dedicated(mut self, yes: bool) -> Self {
        if !matches!(self.placement, Placement::Loop(_)) {
            self.placement = if yes { Placement::Dedicated } else { Placement::Pool };
        }
        self
    }

    /// Runs the child (and every restarted instance) on `event_loop`, like
    /// [`crate::Runtime::spawn_on`]: for protocol actors that never block. Wins over
    /// [`ChildSpec::dedicated`].
    pub fn on_loop(mut self, event_loop: &crate::EventLoop) -> Self {
        self.placement = Placement::Loop(event_loop.clone());
        self
    }
}

struct Child {
    id: ActorId,
    restart: Restart,
    control: Arc<dyn Control>,
}

struct State {
    strategy: Strategy,
    intensity: Intensity,
    children: Vec<Child>,
    restarts: VecDeque<Instant>,
    /// Set when the supervisor escalates or stops: it takes no new children after that.
    stopped: bool,
}

/// The supervisor actor. Its work happens in [`Actor::down`] as children exit.
pub struct Supervisor {
    state: Arc<Mutex<State>>,
}

/// Messages a supervisor accepts (none are needed today; it reacts to its children).
#[derive(Debug)]
pub enum SupervisorMsg {}

impl Actor for Supervisor {
    type Message = SupervisorMsg;

    fn handle(&mut self, _ctx: &mut Context<Self>, msg: SupervisorMsg) {
        match msg {}
    }

    fn down(&mut self, ctx: &mut Context<Self>, down: Down) {
        let mut st = self.state.lock();
        let Some(pos) = st.children.iter().position(|c| c.id == down.id) else {
            return;
        };
        if !st.children[pos].restart.restarts_after(&down.reason) {
            let child = st.children.remove(pos);
            child.control.signal(Signal::Stop(down.reason));
            return;
        }
        let now = Instant::now();
        let period = st.intensity.period;
        while st.restarts.front().is_some_and(|t| now.duration_since(*t) > period) {
            st.restarts.pop_front();
        }
        st.restarts.push_back(now);
        if st.restarts.len() > st.intensity.max_restarts as usize {
            log::error!("supervisor {}: restart intensity exceeded ({}), escalating", ctx.id(), down.reason);
            st.stopped = true;
            for child in st.children.drain(..).rev() {
                child.control.signal(Signal::Stop(ExitReason::Escalated));
            }
            drop(st);
            ctx.cell.signal_stop(ExitReason::Escalated);
            return;
        }
        log::warn!("supervisor {}: restarting {} ({})", ctx.id(), down.id, down.reason);
        let first = match st.strategy {
            Strategy::OneForOne => {
                st.children[pos].control.clone().signal(Signal::Restart);
                return;
            }
            Strategy::OneForAll => 0,
            Strategy::RestForOne => pos,
        };
        for child in &st.children[first..] {
            child.control.clone().signal(Signal::Restart);
        }
    }

    fn stopping(&mut self, _ctx: &mut Context<Self>) {
        // Tell the children to stop, last started first. The signals are asynchronous: the
        // supervisor may finish before its children do. Runtime shutdown still stops children
        // first, because it stops the deepest level and waits before the next.
        let mut st = self.state.lock();
        st.stopped = true;
        for child in st.children.drain(..).rev() {
            child.control.signal(Signal::Stop(ExitReason::Shutdown));
        }
    }
}

/// A running supervisor: start children under it, monitor it, stop it.
#[derive(Clone)]
pub struct SupervisorHandle {
    addr: Addr<Supervisor>,
    state: Arc<Mutex<State>>,
    shared: Arc<RuntimeShared>,
    depth: u32,
}

impl std::fmt::Debug for SupervisorHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SupervisorHandle({})", self.addr.id())
    }
}

pub(crate) fn start(
    shared: &Arc<RuntimeShared>,
    strategy: Strategy,
    intensity: Intensity,
    depth: u32,
) -> Result<SupervisorHandle, SpawnError> {
    let state = Arc::new(Mutex::new(State {
        strategy,
        intensity,
        children: Vec::new(),
        restarts: VecDeque::new(),
        stopped: false,
    }));
    let addr = shared.spawn_cell(
        Supervisor { state: state.clone() },
        None,
        SpawnOptions { mailbox: Mailbox::Bounded(1), placement: Placement::Pool, depth },
    )?;
    Ok(SupervisorHandle { addr, state, shared: shared.clone(), depth })
}

impl SupervisorHandle {
    /// The supervisor's address (to monitor or stop it).
    pub fn addr(&self) -> &Addr<Supervisor> {
        &self.addr
    }

    /// Builds the first instance with the spec's factory and starts it under this supervisor.
    ///
    /// # Errors
    ///
    /// [`SpawnError`] when shutting down, or when a dedicated thread cannot start.
    pub fn start_child<A: Actor>(&self, spec: ChildSpec<A>) -> Result<Addr<A>, SpawnError> {
        let ChildSpec { mut factory, restart, mailbox, placement } = spec;
        let first = factory();
        let sup = self.addr.cell.clone();
        let hook = Box::new(move |down: Down| sup.signal_down(down));
        // Hold the state lock across the spawn so an instant crash finds the child listed.
        let mut st = self.state.lock();
        if st.stopped {
            return Err(SpawnError::SupervisorStopped);
        }
        let addr = self.shared.spawn_cell(
            first,
            Some(Box::new(Supervision { factory, hook, restart, last_exit: None })),
            SpawnOptions { mailbox, placement, depth: self.depth + 1 },
        )?;
        st.children.push(Child { id: addr.id(), restart, control: addr.cell.clone() });
        Ok(addr)
    }

    /// Starts a supervisor under this one (it is a permanent child that is not rebuilt: if it
    /// escalates, this supervisor sees the escalation but cannot restart it).
    ///
    /// # Errors
    ///
    /// [`SpawnError::ShuttingDown`] once shutdown has begun.
    pub fn start_supervisor(&self, strategy: Strategy, intensity: Intensity) -> Result<SupervisorHandle, SpawnError> {
        let child = start(&self.shared, strategy, intensity, self.depth + 1)?;
        let sup = self.addr.cell.clone();
        child.addr.cell.add_monitor(Box::new(move |down| sup.signal_down(down)));
        self.state.lock().children.push(Child {
            id: child.addr.id(),
            restart: Restart::Temporary,
            control: child.addr.cell.clone(),
        });
        Ok(child)
    }

    /// Ids of the children currently supervised, in start order.
    pub fn children(&self) -> Vec<ActorId> {
        self.state.lock().children.iter().map(|c| c.id).collect()
    }
}

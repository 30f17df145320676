//! Faults the fake injects at a numbered step, and calls it parks until a
//! test lets them go.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

/// A fault injected at one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The call (or journal write) fails.
    Fail,
    /// The node dies just before the step takes effect.
    DieBefore,
    /// The node dies just after the step took effect.
    DieAfter,
    /// libvirtd is gone for this and the next few calls.
    Unreachable,
}

/// Counts the engine's steps (hypervisor calls and journal writes) and
/// injects one fault at a chosen step. A "death" parks the calling thread until
/// [`Injector::release`], so the runtime that called it can be shut down as if
/// the process had been killed there.
#[derive(Default)]
pub struct Injector {
    steps: AtomicUsize,
    plan: Mutex<Option<(usize, Fault)>>,
    unreachable_left: AtomicUsize,
    died: AtomicBool,
    released: Mutex<bool>,
    wake: Condvar,
}

/// How many calls libvirtd stays unreachable after an `Unreachable` fault.
const UNREACHABLE_CALLS: usize = 3;

impl Injector {
    /// An injector that will inject `fault` at step `at` (counting from 0).
    pub fn at(at: usize, fault: Fault) -> Arc<Self> {
        let injector = Injector::default();
        *injector.plan.lock().unwrap_or_else(|p| p.into_inner()) = Some((at, fault));
        Arc::new(injector)
    }

    /// Steps counted so far.
    pub fn steps(&self) -> usize {
        self.steps.load(Ordering::SeqCst)
    }

    /// Whether a death was injected.
    pub fn died(&self) -> bool {
        self.died.load(Ordering::SeqCst)
    }

    /// Stops injecting (the restarted node runs fault-free).
    pub fn disarm(&self) {
        *self.plan.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.unreachable_left.store(0, Ordering::SeqCst);
    }

    /// Lets parked threads return (with an error nobody reads any more).
    pub fn release(&self) {
        *self.released.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.wake.notify_all();
    }

    /// Counts a step and returns the fault to inject there, if any.
    pub fn next(&self) -> Option<Fault> {
        let n = self.steps.fetch_add(1, Ordering::SeqCst);
        if self
            .unreachable_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                left.checked_sub(1)
            })
            .is_ok()
        {
            return Some(Fault::Unreachable);
        }
        let plan = *self.plan.lock().unwrap_or_else(|p| p.into_inner());
        match plan {
            Some((at, fault)) if at == n => {
                if fault == Fault::Unreachable {
                    self.unreachable_left
                        .store(UNREACHABLE_CALLS - 1, Ordering::SeqCst);
                }
                Some(fault)
            }
            _ => None,
        }
    }

    /// Parks the calling thread as if the process died here.
    pub fn die(&self) {
        self.died.store(true, Ordering::SeqCst);
        let mut released = self.released.lock().unwrap_or_else(|p| p.into_inner());
        while !*released {
            released = self.wake.wait(released).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// A journal hook that counts each write as a step and injects there.
    pub fn journal_hook(self: &Arc<Self>) -> crate::journal::SaveHook {
        let me = self.clone();
        let pending = Arc::new(Mutex::new(None::<Fault>));
        crate::journal::SaveHook::new(move |after| {
            let mut pending = pending.lock().unwrap_or_else(|p| p.into_inner());
            if after {
                if pending.take() == Some(Fault::DieAfter) {
                    me.die();
                    return Err("the node died".to_string());
                }
                return Ok(());
            }
            match me.next() {
                Some(Fault::Fail) | Some(Fault::Unreachable) => {
                    Err("injected journal write failure".to_string())
                }
                Some(Fault::DieBefore) => {
                    me.die();
                    Err("the node died".to_string())
                }
                other => {
                    *pending = other;
                    Ok(())
                }
            }
        })
    }
}

/// A call the fake parks until the test lets it go, so that a test acts at an
/// exact point of the engine's sequence (see [`FakeHypervisor::hold`]).
pub(super) struct Hold {
    pub(super) call: &'static str,
    pub(super) reached: tokio::sync::Notify,
    pub(super) released: Mutex<bool>,
    pub(super) wake: Condvar,
}

/// Holds the first call of one kind; lets it go when dropped, also when the
/// test fails before it lets it go (a parked call would keep the runtime from
/// shutting down).
pub struct HoldGuard(pub(super) Arc<Hold>);

impl HoldGuard {
    /// Returns once the held call is parked.
    pub async fn reached(&self) {
        self.0.reached.notified().await
    }
}

impl Drop for HoldGuard {
    fn drop(&mut self) {
        *self.0.released.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.0.wake.notify_all();
    }
}

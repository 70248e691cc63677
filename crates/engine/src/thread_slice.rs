//! A short scheduler time slice for the threads a reply waits on, so that they run when woken
//! instead of after a busy thread's slice.
//!
//! The server API's thread and an engine connection's thread ([`crate::io_thread`]) do little
//! work each time they wake (read a request or a reply, hand it on), but an answer waits for each
//! of them in turn. When the node's workers are busy with a fan-out, Linux's scheduler (EEVDF,
//! since 6.6) lets a woken thread wait until the running worker's slice ends: about 3 ms on this
//! project's 2-core machine, once per thread on the way. A thread with a shorter slice than the
//! running one preempts it on wake-up (Linux ≥ 6.12, `sched_setattr`'s `sched_runtime` for a
//! normal thread; older kernels ignore the field).
//!
//! Measured (issue 16, docs/benchmarks.md, 2026-12-04): two Redis nodes and Redis on one core,
//! 10k subscribers of one channel, 3 publishes/s through the server API, the answer's arrival
//! taken by the kernel: publish answer p50 7.4–7.6 ms with the default slice, 1.0–2.6 ms with a
//! 0.1 ms slice on the API and Redis command threads (p99 10.2–10.3 against 5.9–10.0 ms).
//!
//! The slice bounds how long the thread runs before others get the core back, so it suits only
//! threads that run briefly; the workers keep the default, which is what throughput wants.

/// The slice asked for: the shortest the kernel accepts (it clamps to 0.1–100 ms).
pub const SHORT_SLICE_NS: u64 = 100_000;

/// Gives the calling thread a time slice of [`SHORT_SLICE_NS`], keeping its nice value; a thread
/// whose policy is not the normal one (batch, idle, real-time) is left as it is. An error says
/// the kernel refused (the thread runs as before); nothing to do on systems other than Linux.
pub fn shorten() -> std::io::Result<()> {
    imp::shorten()
}

#[cfg(target_os = "linux")]
mod imp {
    use super::SHORT_SLICE_NS;

    /// `struct sched_attr` of `linux/sched/types.h` (its first version, 48 bytes), which the libc
    /// crate does not define.
    #[repr(C)]
    struct SchedAttr {
        size: u32,
        sched_policy: u32,
        sched_flags: u64,
        sched_nice: i32,
        sched_priority: u32,
        sched_runtime: u64,
        sched_deadline: u64,
        sched_period: u64,
    }

    /// The calling thread's nice value (per thread on Linux).
    fn nice() -> i32 {
        // SAFETY: no pointers; `getpriority` fails only for a wrong `which` or `who` (not these),
        // so -1 is a nice value here, not an error.
        #[allow(unsafe_code)]
        unsafe {
            libc::getpriority(libc::PRIO_PROCESS, 0)
        }
    }

    pub(super) fn shorten() -> std::io::Result<()> {
        // SAFETY: no pointers; asks for the calling thread's policy.
        #[allow(unsafe_code)]
        let policy = unsafe { libc::sched_getscheduler(0) };
        if policy != libc::SCHED_OTHER {
            // Batch, idle or real-time, chosen by whoever started the server: left as it is.
            return Ok(());
        }
        let nice = nice();
        let attr = SchedAttr {
            size: std::mem::size_of::<SchedAttr>() as u32,
            sched_policy: libc::SCHED_OTHER as u32,
            sched_flags: 0,
            sched_nice: nice,
            sched_priority: 0,
            sched_runtime: SHORT_SLICE_NS,
            sched_deadline: 0,
            sched_period: 0,
        };
        // SAFETY: `sched_setattr(0, &attr, 0)` reads `attr.size` bytes from the pointer, which
        // points to a live, initialised `SchedAttr` of exactly that size (`repr(C)`, the kernel's
        // layout); the kernel copies it during the call and keeps no reference. Thread 0 is the
        // caller; flags 0 asks for nothing else.
        #[allow(unsafe_code)]
        let r = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &raw const attr, 0) };
        if r == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        /// The slice the kernel keeps for the calling thread, from `/proc` (`se.slice`, ns), if
        /// it shows it.
        fn slice_of_current() -> Option<u64> {
            let sched = std::fs::read_to_string("/proc/thread-self/sched").ok()?;
            sched
                .lines()
                .find(|l| l.starts_with("se.slice"))?
                .split(':')
                .nth(1)?
                .trim()
                .parse::<f64>()
                .ok()
                .map(|v| v as u64)
        }

        #[test]
        fn the_thread_gets_the_short_slice_and_keeps_its_nice_value() {
            std::thread::spawn(|| {
                // A nice value of our own (raising it needs no privilege), to see it kept.
                let niced = nice() + 3;
                // SAFETY: no pointers; sets this thread's nice value.
                #[allow(unsafe_code)]
                let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, niced) };
                assert_eq!(r, 0, "setpriority");
                shorten().expect("sched_setattr");
                assert_eq!(nice(), niced);
                // Kernels before 6.12 accept and ignore the slice; /proc shows it from 6.6.
                if let Some(slice) = slice_of_current() {
                    let release =
                        std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
                    let mut v = release
                        .split(['.', '-'])
                        .map(|p| p.parse::<u32>().unwrap_or(0));
                    if (v.next().unwrap_or(0), v.next().unwrap_or(0)) >= (6, 12) {
                        assert_eq!(slice, SHORT_SLICE_NS);
                    }
                }
            })
            .join()
            .expect("the test thread");
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    pub(super) fn shorten() -> std::io::Result<()> {
        Ok(())
    }
}

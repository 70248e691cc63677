//! Asking the CPU for memory before it is needed, for the fan-out's walk over its subscribers.
//!
//! A big channel's fan-out touches each subscriber's session and its socket's writer once per
//! publication, 10k sessions apart: each first touch was a cache miss. In the one-channel profile
//! (10k subscribers, 1 publish/s; docs/benchmarks.md) the two misses were two thirds of the server's
//! user-space time per delivery, and the samples sat on the first load of each. The fan-out now
//! asks for the next subscribers' lines while the kernel sends to the current one.

/// Asks the CPU to bring every cache line of `value` into its caches, without waiting for them.
///
/// A hint: it never faults, changes nothing that can be observed but timing, and does nothing on
/// targets other than x86-64.
#[inline]
pub fn prefetch<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    {
        use core::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        const LINE: usize = 64;
        let start = (value as *const T).cast::<i8>();
        let mut offset = 0;
        while offset < size_of::<T>() {
            // SAFETY: `_mm_prefetch` is an SSE instruction (part of every x86-64 CPU) and a hint:
            // it reads nothing the program sees and never faults, even on an address that is not
            // mapped. The addresses are inside `value`, borrowed for the call, so `wrapping_add`
            // does not even leave the object.
            #[allow(unsafe_code)]
            unsafe {
                _mm_prefetch::<_MM_HINT_T0>(start.wrapping_add(offset));
            }
            offset += LINE;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefetching_changes_nothing() {
        let big = [7u8; 1000];
        prefetch(&big);
        prefetch(&());
        let v = vec![1u64, 2, 3];
        prefetch(&v);
        assert_eq!((big[999], v.len()), (7, 3));
    }
}

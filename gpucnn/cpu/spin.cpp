// The short spin-wait of gpucnn/cpu/threads.py's worker hand-off, built by native.py.
//
// On the virtual machines measured, waking a thread blocked on a lock took 50-60 us (the idle
// vCPU halts; the wake-up is an interrupt and a VM entry), so each parallel region of a
// training step paid ~120 us in two wake-ups. Spinning here, with the GIL released by ctypes,
// keeps a thread on its core for a short while and sees the next hand-off at once.
#include <chrono>

extern "C" int spin_while_equal(const volatile int* flag, int seen, long max_ns) {
    const auto t0 = std::chrono::steady_clock::now();
    for (unsigned i = 1;; ++i) {
        if (__atomic_load_n(flag, __ATOMIC_ACQUIRE) != seen) return 1;
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
        if ((i & 63) == 0 && std::chrono::duration_cast<std::chrono::nanoseconds>(
                                  std::chrono::steady_clock::now() - t0).count() > max_ns)
            return 0;
    }
}

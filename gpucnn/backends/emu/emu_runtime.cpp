// emu_runtime.cpp -- the gpucnn CUDA emulator's runtime: fibers, block scheduler, barriers,
// warp operations, fault / watchdog recovery. Linked into every emulated module (.so) with
// hidden visibility, so each module has its own copy and its own thread-local state.
//
// Model: one fiber per CUDA thread (64 KiB stack + guard page), all fibers of a block on one OS
// thread; blocks are handed out to up to 2 workers: the launching thread itself and a persistent
// helper thread that joins if it wakes up in time. A fiber runs until it calls a barrier / warp
// operation (it then yields to the scheduler) or returns. The scheduler runs the ready threads of
// a block in the requested order, then releases warps / the block barrier, or reports a
// deadlock. Context switch: a hand-written x86-64 routine (callee-saved registers + rsp).
// A persistent watchdog thread aborts launches that run past their deadline. Faults inside
// kernel code siglongjmp back to the worker loop; the launch is abandoned, the process survives.
//
// Built by gpucnn/backends/emu/build.py, which passes the CUDA limits the runtime enforces
// (gpucnn/toolchain/limits.py defines them) and the ABI as -D; what Python and this file
// share (those, the codes below, EmuErr's layout) is checked at load: gpucnn_emu_facts().
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <csetjmp>
#include <csignal>
#include <cstdarg>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>
#include <pthread.h>
#include <sys/mman.h>
#include <thread>
#include <time.h>
#include <unistd.h>

#if !defined(GPUCNN_EMU_ABI) || !defined(GPUCNN_EMU_DYN_SMEM_MAX) || !defined(GPUCNN_EMU_MAX_THREADS)
#error "build through gpucnn/backends/emu, which defines the ABI and the CUDA limits"
#endif

#define HIDDEN __attribute__((visibility("hidden")))
#define EXPORT extern "C" __attribute__((visibility("default")))

struct EmuU3 { unsigned x, y, z; };

// The per-OS-thread "current CUDA thread" variables the kernels read (see cuda_emu.h).
struct EmuCtx { EmuU3 threadIdx, blockIdx, blockDim, gridDim; unsigned laneid; };   // = __emu_ctx_t
extern "C" {
HIDDEN __thread EmuCtx __emu_ctx;
#define threadIdx (__emu_ctx.threadIdx)
#define blockIdx (__emu_ctx.blockIdx)
#define blockDim (__emu_ctx.blockDim)
#define gridDim (__emu_ctx.gridDim)
#define __emu_laneid (__emu_ctx.laneid)
// Dynamic shared memory (extern __shared__): defined in the module's generated assembly TU,
// where every extern __shared__ name is a label at this address.
extern HIDDEN __thread unsigned char __emu_dyn_smem[];
}
static const size_t kDynSmemMax = GPUCNN_EMU_DYN_SMEM_MAX;
static const unsigned long long kGridMax[3] = {GPUCNN_EMU_GRID_X_MAX, GPUCNN_EMU_GRID_Y_MAX,
                                               GPUCNN_EMU_GRID_Z_MAX};
static const unsigned kBlockMax[3] = {GPUCNN_EMU_BLOCK_X_MAX, GPUCNN_EMU_BLOCK_Y_MAX,
                                      GPUCNN_EMU_BLOCK_Z_MAX};

// ---------------------------------------------------------------- context switch
extern "C" void __emu_switch(void** save_sp, void* to_sp) HIDDEN;
__asm__(R"(
    .text
    .p2align 4
    .globl __emu_switch
    .hidden __emu_switch
    .type __emu_switch,@function
__emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size __emu_switch, .-__emu_switch
)");

// ---------------------------------------------------------------- data structures
enum { F_READY = 0, F_BAR = 1, F_WARP = 2, F_DONE = 3 };
enum { ERR_NONE = 0, ERR_FAULT = 1, ERR_DEADLOCK = 2, ERR_WATCHDOG = 3, ERR_TRAP = 4, ERR_LAUNCH = 5, ERR_SMEM = 6 };
enum { ORDER_FORWARD = 0, ORDER_REVERSE = 1, ORDER_RANDOM = 2 };   // how a block's threads take turns
// launch's checks: bit 0 = checks on, bit 1 = the module uses extern __shared__ (poison +
// overflow check of the dynamic shared memory up to shared_mem + 4 KiB)
enum { CHECKS_ON = 1, CHECKS_DYN_SMEM = 2 };

struct Fiber {
    void* sp;
    int state;
    unsigned tid;        // linear thread id in the block
    EmuU3 idx;
    const char* file;    // where it waits
    int line;
    int op;
    int pred;
    unsigned mask;
    unsigned long long value, result;
    int src;
    unsigned slot;       // stack slot
};

struct EmuErr {          // mirrored by ctypes in faults.py
    int kind;
    int signo;
    unsigned block[3];
    unsigned thread[3];
    unsigned long long addr;
    char msg[2048];
};

struct Launch {
    void (*tramp)(void**);
    void** args;
    EmuU3 grid, block;
    unsigned nthreads;
    long long nblocks;
    size_t shmem;
    int order;
    unsigned long long seed;
    int checks;
    const long long* poison;   // pairs (offset from __emu_dyn_smem, size): static __shared__
    int npoison;
    std::atomic<long long> next_block;
    std::atomic<int> abort;
    std::mutex mu;
    int nworkers;              // worker slots this launch may use
    int participants;          // helpers that joined (under g_pool_mu)
    EmuErr err;                // first error wins (under mu)
};

struct Worker {
    Launch* L;
    int id;
    Fiber* fibers;
    unsigned* perm;
    unsigned long long* coll;  // per thread: its value at a warp-collective op (see release_warps)
    unsigned* free_slots;
    unsigned nfree;
    unsigned pos;              // position in perm of the thread running now
    unsigned live;             // threads of the block not finished
    char* stacks;              // pool: per fiber [guard page][stack]
    size_t stack_cap;          // fibers the pool holds
    void* sched_sp;
    Fiber* cur;
    volatile sig_atomic_t in_fiber;
    volatile sig_atomic_t fault_sig;
    void* fault_addr;
    int fault_code;
    sigjmp_buf jb;
    pthread_t self;            // set by the worker itself while it runs
    volatile sig_atomic_t has_self;
    char* altstack;            // signal stack
    EmuU3 bidx;
    unsigned char* dyn;
};

static const size_t kStack = 64 * 1024;
static const size_t kAltStack = 64 * 1024;
static size_t g_page = 4096;
static __thread Worker* __emu_tw;
static std::mutex& g_launch_mu = *new std::mutex;
static Worker g_workers[2];
static const int kMaxWorkers = 2;

// ---------------------------------------------------------------- errors
static void set_error(Launch* L, int kind, int signo, const Fiber* f, const EmuU3* b,
                      unsigned long long addr, const char* fmt, ...) __attribute__((format(printf, 7, 8)));
static void set_error(Launch* L, int kind, int signo, const Fiber* f, const EmuU3* b,
                      unsigned long long addr, const char* fmt, ...) {
    std::lock_guard<std::mutex> g(L->mu);
    if (L->err.kind == ERR_NONE) {
        L->err.kind = kind;
        L->err.signo = signo;
        if (b) { L->err.block[0] = b->x; L->err.block[1] = b->y; L->err.block[2] = b->z; }
        if (f) { L->err.thread[0] = f->idx.x; L->err.thread[1] = f->idx.y; L->err.thread[2] = f->idx.z; }
        L->err.addr = addr;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(L->err.msg, sizeof L->err.msg, fmt, ap);
        va_end(ap);
    }
    L->abort.store(1);
}

// ---------------------------------------------------------------- fibers
static void fiber_entry() __attribute__((noreturn));
// A fiber runs its thread; when the thread returns and the next thread in this pass's order has
// not started yet, that thread runs on the same stack right away (no switch to the scheduler
// and back): kernels without barriers cost one call per CUDA thread, not two switches.
static void fiber_entry() {
    Worker* w = __emu_tw;
    Launch* L = w->L;
    for (;;) {
        L->tramp(L->args);
        w = __emu_tw;
        Fiber* f = w->cur;
        f->state = F_DONE;
        w->live--;
        Fiber* next = nullptr;
        if (!L->abort.load(std::memory_order_relaxed)) {
            unsigned n = L->nthreads;
            for (unsigned p = w->pos + 1; p < n; p++) {
                Fiber* g = &w->fibers[w->perm[p]];
                if (g->state != F_READY) continue;
                if (!g->sp) { next = g; w->pos = p; }
                break;
            }
        }
        if (!next) {
            __emu_switch(&f->sp, w->sched_sp);
            __builtin_trap();
        }
        next->slot = f->slot;
        f->slot = ~0u;
        next->sp = (void*)1;   // started (its real sp is stored when it yields)
        threadIdx = next->idx;
        __emu_laneid = next->tid & 31;
        w->cur = next;
    }
}

static bool ensure_stacks(Worker* w, size_t n) {
    if (w->stack_cap >= n) return true;
    // As many fibers as the largest block launched so far (rounded up to a power of two): each
    // stack's guard page is a mapping of its own, every module loaded (one per kernel source
    // set) keeps its pools, and a process may hold only vm.max_map_count (65530) mappings.
    size_t cap = 32;
    while (cap < n) cap *= 2;
    size_t slot = kStack + g_page;
    if (w->stacks) munmap(w->stacks, w->stack_cap * slot);
    free(w->fibers);
    free(w->perm);
    free(w->coll);
    free(w->free_slots);
    w->stacks = nullptr;
    w->stack_cap = 0;
    void* p = mmap(nullptr, cap * slot, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) return false;
    for (size_t i = 0; i < cap; i++) mprotect((char*)p + i * slot, g_page, PROT_NONE);
    w->stacks = (char*)p;
    w->stack_cap = cap;
    w->fibers = (Fiber*)calloc(cap, sizeof(Fiber));
    w->perm = (unsigned*)calloc(cap, sizeof(unsigned));
    w->coll = (unsigned long long*)calloc(cap, sizeof(unsigned long long));
    w->free_slots = (unsigned*)calloc(cap, sizeof(unsigned));
    return w->fibers && w->perm && w->coll && w->free_slots;
}

// Stacks are taken from a free list when a thread starts and returned when it finishes, so
// threads that never wait at a barrier all run on the same (cache-hot) stack.
static inline void init_fiber(Worker* w, Fiber* f) {
    unsigned slot = w->free_slots[--w->nfree];
    f->slot = slot;
    char* top = w->stacks + (size_t)(slot + 1) * (kStack + g_page);
    uint64_t* sp = (uint64_t*)top;
    *--sp = 0;                              // fake return address of fiber_entry
    *--sp = (uint64_t)(void*)&fiber_entry;  // popped by ret
    for (int k = 0; k < 6; k++) *--sp = 0;  // rbp rbx r12-r15
    f->sp = sp;
}

// ---------------------------------------------------------------- calls from kernels
static inline void yield_to_scheduler(Worker* w, Fiber* f) {
    __emu_switch(&f->sp, w->sched_sp);
}

extern "C" HIDDEN int __emu_syncthreads(const char* file, int line, int op, int pred) {
    Worker* w = __emu_tw;
    Fiber* f = w->cur;
    f->state = F_BAR;
    f->file = file;
    f->line = line;
    f->op = op;
    f->pred = pred;
    yield_to_scheduler(w, f);
    return (int)__emu_tw->cur->result;
}

extern "C" HIDDEN unsigned long long __emu_warp_op(const char* file, int line, int op, unsigned mask,
                                                   unsigned long long value, int src) {
    Worker* w = __emu_tw;
    Fiber* f = w->cur;
    f->state = F_WARP;
    f->file = file;
    f->line = line;
    f->op = op;
    f->mask = mask;
    f->value = value;
    f->src = src;
    yield_to_scheduler(w, f);
    return __emu_tw->cur->result;
}

extern "C" HIDDEN unsigned __emu_activemask(void) {
    Worker* w = __emu_tw;
    Fiber* f = w->cur;
    unsigned n = w->L->nthreads;
    unsigned base = f->tid & ~31u, m = 0;
    for (unsigned l = 0; l < 32 && base + l < n; l++)
        if (w->fibers[base + l].state != F_DONE) m |= 1u << l;
    return m;
}

// A usage error the header detects in kernel code (e.g. a misaligned wmma pointer): reported
// like __trap(), with the header's message, and the launch abandoned.
extern "C" HIDDEN void __emu_fail(const char* file, int line, const char* what) {
    Worker* w = __emu_tw;
    w->in_fiber = 0;
    set_error(w->L, ERR_TRAP, 0, w->cur, &w->bidx, 0, "%s at %s:%d", what, file, line);
    siglongjmp(w->jb, 2);
}

extern "C" HIDDEN unsigned long long __emu_launch_seed(void) { return __emu_tw->L->seed; }

extern "C" HIDDEN void __emu_trap(const char* file, int line) {
    Worker* w = __emu_tw;
    w->in_fiber = 0;   // no watchdog longjmp while set_error holds the lock
    set_error(w->L, ERR_TRAP, 0, w->cur, &w->bidx, 0, "__trap() called at %s:%d", file, line);
    // abandon the launch: jump back to the worker loop
    siglongjmp(w->jb, 2);
}

// ---------------------------------------------------------------- scheduler
static inline unsigned long long splitmix(unsigned long long& s) {
    unsigned long long z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static void make_order(Worker* w, unsigned n, long long block, unsigned pass) {
    unsigned* p = w->perm;
    int order = w->L->order;
    if (order == ORDER_REVERSE) {
        for (unsigned i = 0; i < n; i++) p[i] = n - 1 - i;
    } else {
        for (unsigned i = 0; i < n; i++) p[i] = i;
        if (order == ORDER_RANDOM) {
            unsigned long long s = w->L->seed * 0x2545F4914F6CDD1Dull ^ ((unsigned long long)block << 20) ^ pass;
            splitmix(s);
            for (unsigned i = n - 1; i > 0; i--) {
                unsigned j = (unsigned)(splitmix(s) % (i + 1));
                unsigned t = p[i]; p[i] = p[j]; p[j] = t;
            }
        }
    }
}

static const char* op_name(const Fiber* f) {
    if (f->state == F_BAR) {
        switch (f->op) {
            case 1: return "__syncthreads_count()";
            case 2: return "__syncthreads_and()";
            case 3: return "__syncthreads_or()";
            default: return "__syncthreads()";
        }
    }
    switch (f->op) {
        case 5: return "wmma::load_matrix_sync()";
        case 6: return "wmma::store_matrix_sync()";
        case 7: return "wmma::mma_sync()";
        case 1: return "__shfl*_sync()";
        case 2: return "__ballot_sync()";
        case 3: return "__any_sync()";
        case 4: return "__all_sync()";
        default: return "__syncwarp()";
    }
}

// Warp-collective ops (wmma::*_sync, op >= kCollectiveOp) need every lane of the warp, an
// exited one included, at the same op and source line; a lane missing, elsewhere or exited,
// leaves the warp waiting and release_block reports the deadlock. On release each lane gets
// the address of its warp's 32 values (coll), so one lane can act for the whole warp.
static const int kCollectiveOp = 5;

static bool same_site(const Fiber* a, const Fiber* b) {
    return a->op == b->op && a->line == b->line && strcmp(a->file, b->file) == 0;
}

static bool release_collective(Worker* w, unsigned base, unsigned cnt, unsigned coll) {
    Fiber* F = w->fibers;
    unsigned full = cnt == 32 ? ~0u : (1u << cnt) - 1;
    if (coll != full) return false;
    for (unsigned l = 1; l < cnt; l++)
        if (!same_site(&F[base], &F[base + l])) return false;
    for (unsigned l = 0; l < cnt; l++) w->coll[base + l] = F[base + l].value;
    for (unsigned l = 0; l < cnt; l++) {
        F[base + l].result = (unsigned long long)(uintptr_t)&w->coll[base];
        F[base + l].state = F_READY;
    }
    return true;
}

// Try to release warps whose participating lanes all arrived. Returns true if any released.
static bool release_warps(Worker* w, unsigned n) {
    bool any = false;
    Fiber* F = w->fibers;
    for (unsigned base = 0; base < n; base += 32) {
        unsigned cnt = n - base < 32 ? n - base : 32;
        unsigned arrived = 0, live = 0, coll = 0;
        for (unsigned l = 0; l < cnt; l++) {
            int s = F[base + l].state;
            if (s != F_DONE) live |= 1u << l;
            if (s == F_WARP) (F[base + l].op >= kCollectiveOp ? coll : arrived) |= 1u << l;
        }
        if (coll && release_collective(w, base, cnt, coll)) { any = true; continue; }
        if (!arrived) continue;
        bool ok = true;
        for (unsigned l = 0; l < cnt && ok; l++)
            if (arrived >> l & 1)
                if ((F[base + l].mask & live) & ~arrived) ok = false;
        if (!ok) continue;
        unsigned ballot = 0;
        for (unsigned l = 0; l < cnt; l++)
            if ((arrived >> l & 1) && F[base + l].value) ballot |= 1u << l;
        for (unsigned l = 0; l < cnt; l++) {
            if (!(arrived >> l & 1)) continue;
            Fiber* f = &F[base + l];
            switch (f->op) {
                case 1: {
                    int s = f->src;
                    if (s >= 0 && s < 32 && (arrived >> s & 1)) f->result = F[base + s].value;
                    else f->result = f->value;
                    break;
                }
                case 2: f->result = ballot & f->mask; break;
                case 3: f->result = (ballot & f->mask) != 0; break;
                case 4: f->result = (ballot & f->mask & arrived) == (f->mask & arrived); break;
                default: f->result = 0;
            }
            f->state = F_READY;
        }
        any = true;
    }
    return any;
}

static void fmt_tid(char* buf, size_t len, const Fiber* f) {
    snprintf(buf, len, "(%u,%u,%u)", f->idx.x, f->idx.y, f->idx.z);
}

// Block barrier release / deadlock diagnosis. Returns 0 = released, -1 = error reported.
static int release_block(Worker* w, unsigned n) {
    Fiber* F = w->fibers;
    Launch* L = w->L;
    int first_bar = -1, first_warp = -1, first_done = -1, other_site = -1;
    unsigned nbar = 0, nlive = 0;
    for (unsigned i = 0; i < n; i++) {
        Fiber* f = &F[i];
        if (f->state == F_DONE) { if (first_done < 0) first_done = (int)i; continue; }
        nlive++;
        if (f->state == F_BAR) {
            nbar++;
            if (first_bar < 0) first_bar = (int)i;
            else if (other_site < 0 && (F[first_bar].line != f->line || strcmp(F[first_bar].file, f->file) != 0 ||
                                        F[first_bar].op != f->op))
                other_site = (int)i;
        } else if (f->state == F_WARP) {
            if (first_warp < 0) first_warp = (int)i;
        }
    }
    char a[48], b[48];
    if (nbar == nlive && other_site < 0 && first_done < 0) {
        int cnt = 0, all = 1, anyp = 0;
        for (unsigned i = 0; i < n; i++) { cnt += F[i].pred != 0; all &= F[i].pred != 0; anyp |= F[i].pred != 0; }
        int op = F[first_bar].op;
        unsigned long long r = op == 1 ? (unsigned long long)cnt : op == 2 ? all : op == 3 ? anyp : 0;
        for (unsigned i = 0; i < n; i++) { F[i].result = r; F[i].state = F_READY; }
        return 0;
    }
    if (other_site >= 0) {
        fmt_tid(a, sizeof a, &F[first_bar]);
        fmt_tid(b, sizeof b, &F[other_site]);
        set_error(L, ERR_DEADLOCK, 0, &F[first_bar], &w->bidx, 0,
                  "divergent barrier: thread %s waits at %s at %s:%d while thread %s waits at %s at %s:%d "
                  "(every thread of the block must reach the same __syncthreads())",
                  a, op_name(&F[first_bar]), F[first_bar].file, F[first_bar].line, b, op_name(&F[other_site]),
                  F[other_site].file, F[other_site].line);
        return -1;
    }
    if (first_bar >= 0 && first_warp < 0 && first_done >= 0) {
        fmt_tid(a, sizeof a, &F[first_bar]);
        fmt_tid(b, sizeof b, &F[first_done]);
        set_error(L, ERR_DEADLOCK, 0, &F[first_bar], &w->bidx, 0,
                  "divergent barrier: %u thread(s) (first %s) wait at %s at %s:%d but %u thread(s) (first %s) "
                  "exited without reaching it (e.g. an early return before __syncthreads())",
                  nbar, a, op_name(&F[first_bar]), F[first_bar].file, F[first_bar].line, n - nlive, b);
        return -1;
    }
    if (first_warp >= 0) {
        Fiber* f = &F[first_warp];
        fmt_tid(a, sizeof a, f);
        unsigned base = f->tid & ~31u;
        char why[256] = "";
        for (unsigned l = 0; l < 32 && base + l < n; l++) {
            Fiber* g = &F[base + l];
            if (!(f->mask >> l & 1)) continue;
            fmt_tid(b, sizeof b, g);
            if (g->state == F_BAR || (g->state == F_WARP && f->op >= kCollectiveOp && !same_site(f, g))) {
                snprintf(why, sizeof why, "; lane %u thread %s waits at %s at %s:%d", l, b, op_name(g), g->file, g->line);
                break;
            }
            if (g->state == F_DONE && f->op >= kCollectiveOp) {
                snprintf(why, sizeof why, "; lane %u thread %s exited without reaching it (every lane of the "
                         "warp must call it)", l, b);
                break;
            }
        }
        set_error(L, ERR_DEADLOCK, 0, f, &w->bidx, 0,
                  "deadlock: thread %s (warp %u lane %u) waits at %s at %s:%d (mask 0x%08x) for lanes that never "
                  "arrive%s",
                  a, f->tid / 32, f->tid % 32, op_name(f), f->file, f->line, f->mask, why);
        return -1;
    }
    set_error(L, ERR_DEADLOCK, 0, nullptr, &w->bidx, 0, "deadlock: no thread can make progress");
    return -1;
}

static inline size_t dyn_check_end(const Launch* L) {
    size_t e = L->shmem + 4096;
    return e < kDynSmemMax ? e : kDynSmemMax;
}

// Runs one block to completion. Returns 0 on success, -1 on error / abort.
static int run_block(Worker* w, long long b) {
    Launch* L = w->L;
    unsigned n = L->nthreads;
    EmuU3 bi;
    bi.x = (unsigned)(b % L->grid.x);
    bi.y = (unsigned)((b / L->grid.x) % L->grid.y);
    bi.z = (unsigned)(b / ((long long)L->grid.x * L->grid.y));
    w->bidx = bi;
    blockIdx = bi;
    Fiber* F = w->fibers;
    unsigned bx = L->block.x, by = L->block.y;
    for (unsigned i = 0; i < n; i++) {
        Fiber* f = &F[i];
        f->tid = i;
        f->idx.x = i % bx;
        f->idx.y = (i / bx) % by;
        f->idx.z = i / (bx * by);
        f->result = 0;
        f->sp = nullptr;
        f->state = F_READY;
    }
    w->nfree = n;
    for (unsigned i = 0; i < n; i++) w->free_slots[i] = n - 1 - i;
    if (L->checks) {
        if (L->checks & CHECKS_DYN_SMEM) memset(w->dyn, 0xff, dyn_check_end(L));
        for (int k = 0; k < L->npoison; k++) memset(w->dyn + L->poison[2 * k], 0xff, (size_t)L->poison[2 * k + 1]);
    }
    w->live = n;
    for (unsigned pass = 0;; pass++) {
        if (pass == 0 && L->order == ORDER_FORWARD) {
            for (unsigned i = 0; i < n; i++) w->perm[i] = i;
        } else {
            make_order(w, n, b, pass);
        }
        for (w->pos = 0; w->pos < n; w->pos++) {
            Fiber* f = &F[w->perm[w->pos]];
            if (f->state != F_READY) continue;
            if (L->abort.load(std::memory_order_relaxed)) return -1;
            threadIdx = f->idx;
            __emu_laneid = f->tid & 31;
            w->cur = f;
            if (!f->sp) init_fiber(w, f);
            w->in_fiber = 1;
            __emu_switch(&w->sched_sp, f->sp);
            w->in_fiber = 0;
            f = w->cur;   // a chain of threads may have run on that stack
            if (f->state == F_DONE) w->free_slots[w->nfree++] = f->slot;
        }
        if (w->live == 0) {
            if (L->checks & CHECKS_DYN_SMEM) {
                // dynamic shared memory just beyond shared_mem must still hold the poison
                const unsigned char* d = w->dyn;
                size_t end = dyn_check_end(L);
                for (size_t k = L->shmem; k < end; k++) {
                    if (d[k] != 0xff) {
                        set_error(L, ERR_SMEM, 0, nullptr, &w->bidx, k,
                                  "out-of-bounds write to dynamic shared memory (extern __shared__): byte offset "
                                  "%zu was written but the launch has shared_mem=%zu bytes",
                                  k, L->shmem);
                        return -1;
                    }
                }
            }
            return 0;
        }
        if (release_warps(w, n)) continue;
        if (release_block(w, n) < 0) return -1;
    }
}

// ---------------------------------------------------------------- signals
static struct sigaction g_old[65];
static std::mutex g_sig_mu;
static int watchdog_signal() { return SIGRTMIN + 5; }

static void on_signal(int sig, siginfo_t* info, void* uctx) {
    // Find our worker by thread id (no thread-local access: a fault in another module's or
    // Python's thread must not make us allocate this module's TLS inside a signal handler).
    Worker* w = nullptr;
    pthread_t me = pthread_self();
    for (int i = 0; i < kMaxWorkers; i++)
        if (g_workers[i].has_self && pthread_equal(g_workers[i].self, me)) w = &g_workers[i];
    if (sig == watchdog_signal()) {
        // Only abandon kernel code of a launch that is being aborted: a watchdog signal sent
        // for an earlier launch may arrive late.
        Launch* L = w ? w->L : nullptr;
        if (!(w && w->in_fiber && L && L->abort.load())) return;
    }
    if (w && w->in_fiber) {
        w->in_fiber = 0;
        w->fault_sig = sig;
        w->fault_addr = info ? info->si_addr : nullptr;
        w->fault_code = info ? info->si_code : 0;
        siglongjmp(w->jb, 1);
    }
    if (sig == watchdog_signal()) return;   // not running kernel code: the scheduler sees `abort`
    // Not ours: chain to the previous handler.
    struct sigaction* old = &g_old[sig];
    if (old->sa_flags & SA_SIGINFO) {
        if (old->sa_sigaction) { old->sa_sigaction(sig, info, uctx); return; }
    } else if (old->sa_handler == SIG_IGN) {
        return;
    } else if (old->sa_handler != SIG_DFL && old->sa_handler != nullptr) {
        old->sa_handler(sig);
        return;
    }
    // default action: restore it and return; the faulting instruction re-executes and kills us.
    signal(sig, SIG_DFL);
    if (sig != SIGSEGV && sig != SIGBUS && sig != SIGILL && sig != SIGFPE) raise(sig);
}

static void install_handlers() {
    std::lock_guard<std::mutex> g(g_sig_mu);
    int sigs[5] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL, watchdog_signal()};
    for (int sig : sigs) {
        struct sigaction cur;
        sigaction(sig, nullptr, &cur);
        if ((cur.sa_flags & SA_SIGINFO) && cur.sa_sigaction == on_signal) continue;
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_sigaction = on_signal;
        sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER | SA_RESTART;
        sigemptyset(&sa.sa_mask);
        struct sigaction old;
        sigaction(sig, &sa, &old);
        g_old[sig] = old;
    }
}

// ---------------------------------------------------------------- workers
static void describe_fault(Worker* w, char* buf, size_t len) {
    uintptr_t a = (uintptr_t)w->fault_addr;
    uintptr_t s0 = (uintptr_t)w->stacks, s1 = s0 + w->stack_cap * (kStack + g_page);
    const char* sname = w->fault_sig == SIGSEGV ? "SIGSEGV" : w->fault_sig == SIGBUS ? "SIGBUS"
                      : w->fault_sig == SIGFPE ? "SIGFPE" : w->fault_sig == SIGILL ? "SIGILL" : "signal";
    if (w->fault_sig == SIGFPE)
        snprintf(buf, len, "SIGFPE: arithmetic exception (integer division by zero or INT_MIN / -1; on a GPU "
                 "the result would be silently undefined)");
    else if (w->fault_sig == SIGILL)
        snprintf(buf, len, "SIGILL: illegal instruction at 0x%lx (__builtin_trap / unreachable code reached?)",
                 (unsigned long)a);
    else if (a >= s0 && a < s1 && (a - s0) % (kStack + g_page) < g_page)
        snprintf(buf, len, "%s: fiber stack overflow (a CUDA thread used more than %zu KiB of stack) at 0x%lx",
                 sname, kStack / 1024, (unsigned long)a);
    else if (w->fault_sig == SIGSEGV && w->fault_code == SI_KERNEL)
        snprintf(buf, len, "%s: general-protection fault: a misaligned vector access (float4/int4/double2 "
                 "need 16-byte aligned addresses, as on a GPU) or a wild pointer", sname);
    else if (w->fault_sig == SIGSEGV && a < 4096)
        snprintf(buf, len, "%s: null pointer access (address 0x%lx)", sname, (unsigned long)a);
    else
        snprintf(buf, len, "%s: invalid memory access at address 0x%lx", sname, (unsigned long)a);
}

static std::atomic<long long> g_cpu_ns{0};

static long long thread_cpu_ns() {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

// Runs blocks of launch L on the calling OS thread until none is left or the launch aborts.
// Called by the launching thread itself (worker 0) and by the persistent helper thread(s).
// CuPy compiles every kernel with -ftz=true, so on the GPU float subnormals are flushed to zero,
// as results and as operands. MXCSR's FTZ (bit 15) and DAZ (bit 6) do the same on the CPU; they
// are set on each emulator thread for the duration of a launch and restored after it, because
// the launching Python thread is itself a worker and the NumPy reference that runs in it next
// must not flush. (The fiber switch saves no MXCSR: all fibers of a thread share its mode.)
// Unlike -ftz, MXCSR flushes doubles too; kernels here compute in float.
static const unsigned kMxcsrFtzDaz = (1u << 15) | (1u << 6);

static unsigned read_mxcsr() {
    unsigned v;
    __asm__ volatile("stmxcsr %0" : "=m"(v));
    return v;
}

static void write_mxcsr(unsigned v) { __asm__ volatile("ldmxcsr %0" : : "m"(v)); }

static void worker_main(Worker* w, Launch* L) {
    long long cpu0 = thread_cpu_ns();
    const unsigned mxcsr_before = read_mxcsr();
    write_mxcsr(mxcsr_before | kMxcsrFtzDaz);
    w->L = L;
    w->cur = nullptr;
    w->fault_sig = 0;
    w->in_fiber = 0;
    __emu_tw = w;
    stack_t ss, old_ss;
    ss.ss_sp = w->altstack;
    ss.ss_size = kAltStack;
    ss.ss_flags = 0;
    sigaltstack(&ss, &old_ss);
    w->self = pthread_self();
    w->has_self = 1;
    blockDim = L->block;
    gridDim = L->grid;
    w->dyn = __emu_dyn_smem;
    if (sigsetjmp(w->jb, 1) == 0) {
        for (;;) {
            if (L->abort.load()) break;
            long long b = L->next_block.fetch_add(1);
            if (b >= L->nblocks) break;
            if (run_block(w, b) < 0) break;
        }
    } else {
        // came back from a signal handler (fault / watchdog) or __trap()
        w->in_fiber = 0;
        if (w->fault_sig == watchdog_signal()) {
            if (w->cur) {
                char a[48];
                fmt_tid(a, sizeof a, w->cur);
                // the watchdog recorded the error; add where this thread was
                std::lock_guard<std::mutex> g(L->mu);
                if (L->err.kind == ERR_WATCHDOG && L->err.msg[0] == 0) {
                    L->err.block[0] = w->bidx.x; L->err.block[1] = w->bidx.y; L->err.block[2] = w->bidx.z;
                    L->err.thread[0] = w->cur->idx.x; L->err.thread[1] = w->cur->idx.y;
                    L->err.thread[2] = w->cur->idx.z;
                    snprintf(L->err.msg, sizeof L->err.msg, "thread %s of block (%u,%u,%u) was still running",
                             a, w->bidx.x, w->bidx.y, w->bidx.z);
                }
            }
        } else if (w->fault_sig != 0) {
            char d[400];
            describe_fault(w, d, sizeof d);
            set_error(L, ERR_FAULT, w->fault_sig, w->cur, &w->bidx, (unsigned long long)(uintptr_t)w->fault_addr,
                      "%s", d);
        }
        L->abort.store(1);
    }
    w->in_fiber = 0;
    w->has_self = 0;
    sigaltstack(&old_ss, nullptr);
    __emu_tw = nullptr;
    w->L = nullptr;
    write_mxcsr(mxcsr_before);  // also after a fault: siglongjmp does not restore it
    g_cpu_ns.fetch_add(thread_cpu_ns() - cpu0);
}

// ---------------------------------------------------------------- helper threads and watchdog
// Helpers are persistent. A launch is "open" while the launching thread runs blocks itself; a
// helper that wakes up in time joins (participants++) and takes blocks too. The launching thread
// never waits for a helper that has not joined, so a busy machine cannot delay a launch.
// Never destroyed: persistent threads wait on them while static destructors run at exit.
static std::mutex& g_pool_mu = *new std::mutex;
static std::condition_variable& g_pool_cv = *new std::condition_variable;   // helpers wait for a launch
static std::condition_variable& g_done_cv = *new std::condition_variable;   // launcher waits for helpers
static Launch* g_open = nullptr;
static unsigned long long g_gen = 0;
static int g_helpers = 0;

static void* helper_thread(void* p) {
    int id = (int)(intptr_t)p;
    Worker* w = &g_workers[id];
    unsigned long long seen = 0;
    std::unique_lock<std::mutex> lk(g_pool_mu);
    for (;;) {
        g_pool_cv.wait(lk, [&] { return g_gen != seen; });
        seen = g_gen;
        Launch* L = g_open;
        if (!L || L->abort.load() || L->next_block.load() >= L->nblocks || id >= L->nworkers) continue;
        L->participants++;
        lk.unlock();
        worker_main(w, L);
        lk.lock();
        L->participants--;
        g_done_cv.notify_all();
    }
    return nullptr;
}

static std::mutex& g_wd_mu = *new std::mutex;
static std::condition_variable& g_wd_cv = *new std::condition_variable;
static Launch* g_wd_launch = nullptr;
static unsigned long long g_wd_gen = 0;      // launches armed so far (a Launch address may repeat)
static std::chrono::steady_clock::time_point g_wd_deadline;
static bool g_wd_started = false;

static void signal_workers(Launch* L) {
    for (int i = 0; i < kMaxWorkers; i++) {
        Worker* w = &g_workers[i];
        if (w->has_self && w->L == L) pthread_kill(w->self, watchdog_signal());
    }
}

static void* watchdog_thread(void*) {
    std::unique_lock<std::mutex> lk(g_wd_mu);
    for (;;) {
        if (!g_wd_launch) { g_wd_cv.wait(lk); continue; }
        Launch* L = g_wd_launch;
        unsigned long long gen = g_wd_gen;
        if (g_wd_cv.wait_until(lk, g_wd_deadline) != std::cv_status::timeout) continue;
        if (g_wd_gen != gen || !g_wd_launch || std::chrono::steady_clock::now() < g_wd_deadline) continue;
        {
            std::lock_guard<std::mutex> g(L->mu);
            if (L->err.kind == ERR_NONE) { L->err.kind = ERR_WATCHDOG; L->err.msg[0] = 0; }
        }
        L->abort.store(1);
        // interrupt the workers still inside kernel code until the launcher disarms us
        while (g_wd_gen == gen && g_wd_launch == L) {
            signal_workers(L);
            g_wd_cv.wait_for(lk, std::chrono::milliseconds(20));
        }
    }
    return nullptr;
}

// After fork() only the forking thread exists in the child: forget the helper and watchdog
// threads (they are started again by the child's first launch).
static void atfork_child() {
    new (&g_pool_mu) std::mutex;
    new (&g_pool_cv) std::condition_variable;
    new (&g_done_cv) std::condition_variable;
    new (&g_wd_mu) std::mutex;
    new (&g_wd_cv) std::condition_variable;
    new (&g_launch_mu) std::mutex;
    g_open = nullptr;
    g_wd_launch = nullptr;
    g_helpers = 0;
    g_wd_started = false;
    for (int i = 0; i < kMaxWorkers; i++) { g_workers[i].has_self = 0; g_workers[i].L = nullptr; }
}

static bool start_threads(int nw) {
    static bool atfork_done = false;
    if (!atfork_done) {
        pthread_atfork(nullptr, nullptr, atfork_child);
        atfork_done = true;
    }
    if (!g_wd_started) {
        pthread_t t;
        pthread_attr_t at;
        pthread_attr_init(&at);
        pthread_attr_setstacksize(&at, 256 * 1024);
        pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
        bool ok = pthread_create(&t, &at, watchdog_thread, nullptr) == 0;
        pthread_attr_destroy(&at);
        if (!ok) return false;
        g_wd_started = true;
    }
    while (g_helpers < nw - 1) {
        int id = g_helpers + 1;
        if (!g_workers[id].altstack) g_workers[id].altstack = (char*)malloc(kAltStack);
        pthread_t t;
        pthread_attr_t at;
        pthread_attr_init(&at);
        pthread_attr_setstacksize(&at, 1 << 20);
        pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
        bool ok = pthread_create(&t, &at, helper_thread, (void*)(intptr_t)id) == 0;
        pthread_attr_destroy(&at);
        if (!ok) break;
        g_helpers++;
    }
    return true;
}

// ---------------------------------------------------------------- exported API
EXPORT int gpucnn_emu_launch(void (*tramp)(void**), void** args, const unsigned* grid, const unsigned* block,
                             unsigned long long shmem, int order, unsigned long long seed, int checks,
                             double watchdog_s, const long long* poison, int npoison, int max_workers,
                             EmuErr* err) {
    memset(err, 0, sizeof *err);
    unsigned long long nthreads = (unsigned long long)block[0] * block[1] * block[2];
    bool valid = nthreads >= 1 && nthreads <= GPUCNN_EMU_MAX_THREADS;
    for (int d = 0; d < 3; d++)
        valid = valid && grid[d] >= 1 && grid[d] <= kGridMax[d] && block[d] <= kBlockMax[d];
    if (!valid) {
        err->kind = ERR_LAUNCH;
        snprintf(err->msg, sizeof err->msg, "invalid launch configuration grid=(%u,%u,%u) block=(%u,%u,%u) "
                 "(CUDA: 1..%d threads per block, block <= (%u,%u,%u), grid <= (%llu,%llu,%llu))",
                 grid[0], grid[1], grid[2], block[0], block[1], block[2], GPUCNN_EMU_MAX_THREADS,
                 kBlockMax[0], kBlockMax[1], kBlockMax[2], kGridMax[0], kGridMax[1], kGridMax[2]);
        return err->kind;
    }
    long long nblocks = (long long)grid[0] * grid[1] * grid[2];
    if (shmem > kDynSmemMax) {
        err->kind = ERR_LAUNCH;
        snprintf(err->msg, sizeof err->msg, "dynamic shared memory of %llu bytes exceeds the %zu-byte limit",
                 shmem, kDynSmemMax);
        return err->kind;
    }
    std::lock_guard<std::mutex> lg(g_launch_mu);
    g_cpu_ns.store(0);
    g_page = (size_t)sysconf(_SC_PAGESIZE);
    install_handlers();
    int nw = max_workers < 1 ? 1 : max_workers > kMaxWorkers ? kMaxWorkers : max_workers;
    if (nblocks < nw) nw = (int)nblocks;
    for (int i = 0; i < nw; i++) {
        if (!ensure_stacks(&g_workers[i], nthreads)) {
            err->kind = ERR_LAUNCH;
            snprintf(err->msg, sizeof err->msg, "out of memory allocating fiber stacks");
            return err->kind;
        }
    }
    if (!g_workers[0].altstack) g_workers[0].altstack = (char*)malloc(kAltStack);
    if (!start_threads(nw)) {
        err->kind = ERR_LAUNCH;
        snprintf(err->msg, sizeof err->msg, "could not start the watchdog thread");
        return err->kind;
    }
    Launch* L = new Launch();
    L->tramp = tramp;
    L->args = args;
    L->grid = {grid[0], grid[1], grid[2]};
    L->block = {block[0], block[1], block[2]};
    L->nthreads = (unsigned)nthreads;
    L->nblocks = nblocks;
    L->shmem = shmem;
    L->order = order;
    L->seed = seed;
    L->checks = checks;
    L->poison = poison;
    L->npoison = npoison;
    L->nworkers = nw;
    L->participants = 0;
    L->next_block.store(0);
    L->abort.store(0);
    memset(&L->err, 0, sizeof L->err);
    {
        std::lock_guard<std::mutex> g(g_wd_mu);
        g_wd_launch = L;
        g_wd_gen++;
        g_wd_deadline = std::chrono::steady_clock::now() +
                        std::chrono::microseconds((long long)(watchdog_s > 0 ? watchdog_s * 1e6 : 1e15));
    }
    g_wd_cv.notify_all();
    if (nw > 1) {
        {
            std::lock_guard<std::mutex> g(g_pool_mu);
            g_open = L;
            g_gen++;
        }
        g_pool_cv.notify_all();
    }
    worker_main(&g_workers[0], L);
    {
        std::unique_lock<std::mutex> lk(g_pool_mu);
        if (g_open == L) g_open = nullptr;
        // wait for helpers that joined; if the launch aborted, keep interrupting them
        while (L->participants > 0) {
            if (L->abort.load()) {
                signal_workers(L);
                g_done_cv.wait_for(lk, std::chrono::milliseconds(20));
            } else {
                g_done_cv.wait(lk);
            }
        }
    }
    {
        std::lock_guard<std::mutex> g(g_wd_mu);
        g_wd_launch = nullptr;
        g_wd_gen++;
    }
    g_wd_cv.notify_all();
    if (L->err.kind == ERR_WATCHDOG && L->err.msg[0] == 0)
        snprintf(L->err.msg, sizeof L->err.msg, "no running thread identified");
    if (L->abort.load() && L->err.kind == ERR_NONE) {   // must not happen; never report success
        L->err.kind = ERR_LAUNCH;
        snprintf(L->err.msg, sizeof L->err.msg, "internal error: the launch was aborted without a reason");
    }
    *err = L->err;
    int kind = L->err.kind;
    delete L;
    return kind;
}

// Guarded buffers for checks=True: [PROT_NONE page][canary 0xff.. | data][PROT_NONE page], the
// data's end touching the trailing guard page (any access past the end faults). Writes before the
// start are found by checking the canary after the launch; reads there see 0xff bytes (NaN / -1).
// align > 1: the data start is rounded down to that alignment (kernels using float4 & co. on
// arrays whose size is not a multiple of 16 bytes); the few bytes between the data's end and the
// guard page are canary too.
EXPORT void* gpucnn_emu_guard_alloc(unsigned long long nbytes, unsigned long long align, void** base_out,
                                    unsigned long long* total_out) {
    size_t pg = (size_t)sysconf(_SC_PAGESIZE);
    if (align < 1) align = 1;
    size_t dpages = (nbytes + align - 1 + pg - 1) / pg;
    if (dpages == 0) dpages = 1;
    size_t total = (dpages + 2) * pg;
    void* p = mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return nullptr;
    mprotect(p, pg, PROT_NONE);
    mprotect((char*)p + (dpages + 1) * pg, pg, PROT_NONE);
    char* end = (char*)p + (dpages + 1) * pg;
    char* data = (char*)(((uintptr_t)(end - nbytes)) & ~(uintptr_t)(align - 1));
    memset((char*)p + pg, 0xff, (size_t)(end - ((char*)p + pg)));   // canary: reads see NaN / -1
    *base_out = p;
    *total_out = total;
    return data;
}

EXPORT void gpucnn_emu_guard_free(void* base, unsigned long long total) { munmap(base, total); }

EXPORT unsigned long long gpucnn_emu_dyn_smem_addr(void) { return (unsigned long long)(uintptr_t)__emu_dyn_smem; }

// CPU time (ns) the worker threads of the last launch used (a load-independent speed measure).
EXPORT long long gpucnn_emu_last_cpu_ns(void) { return g_cpu_ns.load(); }

// What Python checks when it loads a module (runtime.py reads it with gpucnn/cpu/native.py's
// facts()): what this runtime was built with, the codes a launch takes and returns, EmuErr's
// layout.
struct EmuFact {
    const char* name;
    long long value;
};
#define FACT(x) {#x, (long long)(x)}
#define FIELD(S, f) {#S "." #f, (long long)offsetof(S, f)}
EXPORT const EmuFact* gpucnn_emu_facts(void) {
    static const EmuFact facts[] = {
        FACT(GPUCNN_EMU_ABI), FACT(GPUCNN_EMU_DYN_SMEM_MAX), FACT(GPUCNN_EMU_MAX_THREADS),
        FACT(GPUCNN_EMU_GRID_X_MAX), FACT(GPUCNN_EMU_GRID_Y_MAX), FACT(GPUCNN_EMU_GRID_Z_MAX),
        FACT(GPUCNN_EMU_BLOCK_X_MAX), FACT(GPUCNN_EMU_BLOCK_Y_MAX), FACT(GPUCNN_EMU_BLOCK_Z_MAX),
        FACT(ERR_FAULT), FACT(ERR_DEADLOCK), FACT(ERR_WATCHDOG), FACT(ERR_TRAP), FACT(ERR_LAUNCH),
        FACT(ERR_SMEM), FACT(ORDER_FORWARD), FACT(ORDER_REVERSE), FACT(ORDER_RANDOM),
        FACT(CHECKS_ON), FACT(CHECKS_DYN_SMEM),
        {"sizeof EmuErr", (long long)sizeof(EmuErr)}, FIELD(EmuErr, kind), FIELD(EmuErr, signo),
        FIELD(EmuErr, block), FIELD(EmuErr, thread), FIELD(EmuErr, addr), FIELD(EmuErr, msg),
        {nullptr, 0}};
    return facts;
}

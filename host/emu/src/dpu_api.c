/*
 * dpu_api.c - the emulator's libdpu subset (dpu.h) and its extras (dpu_emu.h): DPU sets, program
 * loading (per-worker private images of the kernel .so), symbol transfers with the SDK's checks
 * and error codes, synchronous and asynchronous launches over worker threads, logs, counters and
 * faults. Nothing here exits or aborts: every failure is a dpu_error_t, with details available
 * from dpu_emu_last_error() on the calling thread and, for DPU faults, dpu_emu_last_fault().
 */
#include "emu_internal.h"

#include <dlfcn.h>
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <link.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define EMU_DEFAULT_SYSTEM_DPUS 64u
#define EMU_DEFAULT_DPUS_PER_RANK 64u
#define EMU_MAX_DPUS 65536u

static unsigned g_workers; /* 0 = one per online CPU */
static __thread char tls_error[EMU_MSG_LEN];
static __thread dpu_error_t tls_error_code;

static dpu_error_t fail(dpu_error_t code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static dpu_error_t fail(dpu_error_t code, const char *fmt, ...)
{
    tls_error_code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tls_error, sizeof tls_error, fmt, ap);
    va_end(ap);
    return code;
}

EMU_API const char *dpu_emu_last_error(void) { return tls_error; }

EMU_API void dpu_emu_set_workers(unsigned n) { __atomic_store_n(&g_workers, n, __ATOMIC_RELAXED); }

/* ------------------------------------------------------------------------------------------ */
/* Error strings                                                                               */

static const char *error_name(dpu_error_t e)
{
    switch (e) {
    case DPU_OK: return "success";
    case DPU_ERR_INTERNAL: return "internal error";
    case DPU_ERR_SYSTEM: return "system error";
    case DPU_ERR_DRIVER: return "driver error";
    case DPU_ERR_ALLOCATION: return "allocation error";
    case DPU_ERR_INVALID_DPU_SET: return "invalid dpu set";
    case DPU_ERR_INVALID_THREAD_ID: return "invalid thread id";
    case DPU_ERR_INVALID_NOTIFY_ID: return "invalid notify id";
    case DPU_ERR_INVALID_WRAM_ACCESS: return "invalid wram access";
    case DPU_ERR_INVALID_IRAM_ACCESS: return "invalid iram access";
    case DPU_ERR_INVALID_MRAM_ACCESS: return "invalid mram access";
    case DPU_ERR_INVALID_SYMBOL_ACCESS: return "invalid symbol access";
    case DPU_ERR_MRAM_BUSY: return "mram is busy";
    case DPU_ERR_TRANSFER_ALREADY_SET: return "transfer already set";
    case DPU_ERR_NO_PROGRAM_LOADED: return "no program loaded";
    case DPU_ERR_DIFFERENT_DPU_PROGRAMS: return "different dpu programs";
    case DPU_ERR_CORRUPTED_MEMORY: return "corrupted memory";
    case DPU_ERR_DPU_DISABLED: return "dpu is disabled";
    case DPU_ERR_DPU_ALREADY_RUNNING: return "dpu is already running";
    case DPU_ERR_INVALID_MEMORY_TRANSFER: return "invalid memory transfer";
    case DPU_ERR_INVALID_LAUNCH_POLICY: return "invalid launch policy";
    case DPU_ERR_DPU_FAULT: return "dpu is in fault";
    case DPU_ERR_ELF_INVALID_FILE: return "invalid elf file";
    case DPU_ERR_ELF_NO_SUCH_FILE: return "no such elf file";
    case DPU_ERR_ELF_NO_SUCH_SECTION: return "no such elf section";
    case DPU_ERR_TIMEOUT: return "timeout";
    case DPU_ERR_INVALID_PROFILE: return "invalid profile";
    case DPU_ERR_UNKNOWN_SYMBOL: return "unknown symbol";
    case DPU_ERR_LOG_FORMAT: return "log format error";
    case DPU_ERR_LOG_CONTEXT_MISSING: return "log context missing";
    case DPU_ERR_LOG_BUFFER_TOO_SMALL: return "log buffer too small";
    case DPU_ERR_VPD_INVALID_FILE: return "invalid vpd file";
    case DPU_ERR_VPD_NO_REPAIR: return "no vpd repair";
    case DPU_ERR_NO_THREAD_PER_RANK: return "no thread per rank";
    case DPU_ERR_INVALID_BUFFER_SIZE: return "invalid buffer size";
    case DPU_ERR_NONBLOCKING_SYNC_CALLBACK: return "non-blocking synchronous callback";
    case DPU_ERR_TOO_MANY_TASKLETS: return "too many tasklets";
    case DPU_ERR_SG_TOO_MANY_BLOCKS: return "too many scatter/gather blocks";
    case DPU_ERR_SG_LENGTH_MISMATCH: return "scatter/gather length mismatch";
    case DPU_ERR_SG_NOT_ACTIVATED: return "scatter/gather not activated";
    case DPU_ERR_SG_NOT_MRAM_SYMBOL: return "scatter/gather symbol is not in MRAM";
    case DPU_ERR_ASYNC_JOBS: return "asynchronous job error";
    default: return "unknown error";
    }
}

/* The caller owns (and frees) the returned string, as the SDK documents. When the calling
 * thread's last failure had this status, its details follow (which symbol, which DPU faulted
 * and why), so that DPU_ASSERT's message says what went wrong. NULL only when out of memory. */
EMU_API char *dpu_error_to_string(dpu_error_t status)
{
    const char *name = error_name(status);
    if (status == DPU_OK || tls_error_code != status || !tls_error[0])
        return strdup(name);
    size_t n = strlen(name) + strlen(tls_error) + 16;
    char *s = (char *)malloc(n);
    if (s)
        snprintf(s, n, "%s [emulator: %s]", name, tls_error);
    return s;
}

/* ------------------------------------------------------------------------------------------ */
/* Sets and handles                                                                            */

/* What a struct dpu_set_t designates: DPUs [first, first + count) of one emulated set. */
struct hview {
    struct updlrm_emu_set *set;
    uint32_t first, count;
};

static int handle_view(struct dpu_set_t h, struct hview *v)
{
    v->set = NULL;
    v->first = v->count = 0;
    if (h.kind == DPU_SET_DPU) {
        const struct emu_dpu *d = (const struct emu_dpu *)h.dpu;
        if (!d || !d->owner || d->owner->magic != EMU_SET_MAGIC)
            return -1;
        v->set = d->owner;
        v->first = d->index;
        v->count = 1;
        return 0;
    }
    if (h.kind != DPU_SET_RANKS || h.list.nr_ranks == 0 || !h.list.ranks || !h.list.ranks[0])
        return -1;
    const struct dpu_rank_t *r0 = h.list.ranks[0], *rl = h.list.ranks[h.list.nr_ranks - 1];
    if (!r0->set || r0->set->magic != EMU_SET_MAGIC || !rl || rl->set != r0->set)
        return -1;
    struct updlrm_emu_set *s = r0->set;
    /* Rank lists are slices of the set's own array, so ranks are contiguous. */
    if (h.list.ranks < s->rank_ptrs || h.list.ranks + h.list.nr_ranks > s->rank_ptrs + s->nr_ranks)
        return -1;
    v->set = s;
    v->first = r0->first;
    v->count = rl->first + rl->count - r0->first;
    return 0;
}

static dpu_error_t check_handle(struct dpu_set_t h, struct hview *v)
{
    if (handle_view(h, v) != 0 || v->count == 0 || v->first >= v->set->nr_dpus ||
        v->count > v->set->nr_dpus - v->first)
        return fail(DPU_ERR_INVALID_DPU_SET, "invalid DPU set handle (freed, or not from dpu_alloc)");
    return DPU_OK;
}

static struct dpu_set_t handle_of_set(struct updlrm_emu_set *s)
{
    struct dpu_set_t h;
    memset(&h, 0, sizeof h);
    h.kind = DPU_SET_RANKS;
    h.list.nr_ranks = s->nr_ranks;
    h.list.ranks = s->rank_ptrs;
    return h;
}

/* Waits for an asynchronous launch in progress on the set (operations queue behind it). */
static void wait_idle(struct updlrm_emu_set *s)
{
    /* Join outside the lock: the launch thread takes it to record a fault. */
    pthread_mutex_lock(&s->lock);
    int running = s->async_running;
    pthread_t th = s->async_thread;
    s->async_running = 0;
    pthread_mutex_unlock(&s->lock);
    if (running)
        pthread_join(th, NULL);
}

EMU_API uint32_t updlrm_emu_set_size(struct dpu_set_t h)
{
    struct hview v;
    return handle_view(h, &v) == 0 ? v.count : 0;
}

/* The i-th DPU of a set (an invalid handle, kind DPU with a NULL dpu, when out of range). */
EMU_API struct dpu_set_t updlrm_emu_set_dpu(struct dpu_set_t h, uint32_t i)
{
    struct hview v;
    struct dpu_set_t d;
    memset(&d, 0, sizeof d);
    d.kind = DPU_SET_DPU;
    if (handle_view(h, &v) == 0 && i < v.count)
        d.dpu = (struct dpu_t *)&v.set->dpus[v.first + i];
    return d;
}

EMU_API uint32_t updlrm_emu_set_nr_ranks(struct dpu_set_t h)
{
    if (h.kind == DPU_SET_DPU)
        return h.dpu ? 1u : 0u;
    return h.kind == DPU_SET_RANKS ? h.list.nr_ranks : 0u;
}

/* The i-th rank of a set of ranks; a single DPU is its own (only) "rank". */
EMU_API struct dpu_set_t updlrm_emu_set_rank(struct dpu_set_t h, uint32_t i)
{
    if (h.kind == DPU_SET_DPU)
        return h;
    struct dpu_set_t r;
    memset(&r, 0, sizeof r);
    r.kind = DPU_SET_RANKS;
    if (h.kind == DPU_SET_RANKS && i < h.list.nr_ranks) {
        r.list.nr_ranks = 1;
        r.list.ranks = h.list.ranks + i;
    }
    return r;
}

EMU_API struct dpu_t *dpu_from_set(struct dpu_set_t h)
{
    return h.kind == DPU_SET_DPU ? h.dpu : NULL;
}

EMU_API struct dpu_set_t dpu_set_from_dpu(struct dpu_t *dpu)
{
    struct dpu_set_t d;
    memset(&d, 0, sizeof d);
    d.kind = DPU_SET_DPU;
    d.dpu = dpu;
    return d;
}

static int parse_u32(const char *v, size_t n, uint32_t *out)
{
    char buf[32];
    if (n == 0 || n >= sizeof buf)
        return -1;
    memcpy(buf, v, n);
    buf[n] = '\0';
    char *end = NULL;
    errno = 0;
    unsigned long x = strtoul(buf, &end, 10);
    if (errno || *end || x > 0xffffffffUL)
        return -1;
    *out = (uint32_t)x;
    return 0;
}

struct emu_profile {
    uint32_t system_dpus, dpus_per_rank, workers, timeout_ms;
    int policy, strict;
    uint64_t seed;
};

/* "key=value,key=value": backend (emulator only), nrDpus, nrDpusPerRank, workers; other keys are
 * ignored (they configure the real SDK's backends). */
static dpu_error_t parse_profile_into(const char *profile, struct emu_profile *p)
{
    const char *s = profile;
    while (s && *s) {
        const char *end = strchr(s, ',');
        size_t len = end ? (size_t)(end - s) : strlen(s);
        const char *eq = memchr(s, '=', len);
        if (len > 0) {
            if (!eq)
                return fail(DPU_ERR_INVALID_PROFILE, "profile entry '%.*s' is not key=value", (int)len, s);
            size_t klen = (size_t)(eq - s), vlen = len - klen - 1;
            const char *v = eq + 1;
            if (klen == 7 && !strncmp(s, "backend", 7)) {
                if (!(vlen == 8 && !strncmp(v, "emulator", 8)))
                    return fail(DPU_ERR_INVALID_PROFILE,
                                "profile backend=%.*s is not available: this library is the updlrm emulator "
                                "(backend=emulator); simulator and hw need the UPMEM SDK",
                                (int)vlen, v);
            } else if (klen == 6 && !strncmp(s, "nrDpus", 6)) {
                if (parse_u32(v, vlen, &p->system_dpus) || p->system_dpus == 0 || p->system_dpus > EMU_MAX_DPUS)
                    return fail(DPU_ERR_INVALID_PROFILE, "profile nrDpus=%.*s must be 1..%u", (int)vlen, v,
                                EMU_MAX_DPUS);
            } else if (klen == 13 && !strncmp(s, "nrDpusPerRank", 13)) {
                if (parse_u32(v, vlen, &p->dpus_per_rank) || p->dpus_per_rank == 0 || p->dpus_per_rank > 64)
                    return fail(DPU_ERR_INVALID_PROFILE, "profile nrDpusPerRank=%.*s must be 1..64",
                                (int)vlen, v);
            } else if (klen == 8 && !strncmp(s, "schedule", 8)) {
                if (vlen == 2 && !strncmp(v, "rr", 2))
                    p->policy = EMU_POLICY_RR;
                else if (vlen == 6 && !strncmp(v, "random", 6))
                    p->policy = EMU_POLICY_RANDOM;
                else if (vlen == 3 && !strncmp(v, "run", 3))
                    p->policy = EMU_POLICY_RUN;
                else
                    return fail(DPU_ERR_INVALID_PROFILE, "profile schedule=%.*s must be rr, random or run", (int)vlen,
                                v);
            } else if (klen == 4 && !strncmp(s, "seed", 4)) {
                char buf[32];
                char *end = NULL;
                if (vlen == 0 || vlen >= sizeof buf)
                    return fail(DPU_ERR_INVALID_PROFILE, "profile seed=%.*s is not a number", (int)vlen, v);
                memcpy(buf, v, vlen);
                buf[vlen] = '\0';
                errno = 0;
                p->seed = strtoull(buf, &end, 10);
                if (errno || *end)
                    return fail(DPU_ERR_INVALID_PROFILE, "profile seed=%.*s is not a number", (int)vlen, v);
            } else if (klen == 6 && !strncmp(s, "strict", 6)) {
                if (vlen != 1 || (v[0] != '0' && v[0] != '1'))
                    return fail(DPU_ERR_INVALID_PROFILE, "profile strict=%.*s must be 0 or 1", (int)vlen, v);
                p->strict = v[0] - '0';
            } else if (klen == 9 && !strncmp(s, "timeoutMs", 9)) {
                if (parse_u32(v, vlen, &p->timeout_ms))
                    return fail(DPU_ERR_INVALID_PROFILE, "profile timeoutMs=%.*s must be 0..4294967295", (int)vlen, v);
            } else if (klen == 7 && !strncmp(s, "workers", 7)) {
                if (parse_u32(v, vlen, &p->workers) || p->workers > 1024)
                    return fail(DPU_ERR_INVALID_PROFILE, "profile workers=%.*s must be 0..1024", (int)vlen,
                                v);
            }
        }
        s = end ? end + 1 : NULL;
    }
    return DPU_OK;
}

static dpu_error_t parse_profile(const char *profile, struct emu_profile *p)
{
    p->system_dpus = EMU_DEFAULT_SYSTEM_DPUS;
    p->dpus_per_rank = EMU_DEFAULT_DPUS_PER_RANK;
    p->workers = 0;
    p->policy = -1;
    p->strict = -1;
    p->seed = 0;
    p->timeout_ms = EMU_DEFAULT_TIMEOUT_MS;
    const char *env_timeout = getenv("UPDLRM_EMU_TIMEOUT_MS");
    if (env_timeout && *env_timeout)
        (void)parse_u32(env_timeout, strlen(env_timeout), &p->timeout_ms);
    dpu_error_t e = parse_profile_into(getenv("UPMEM_PROFILE_BASE"), p);
    if (e != DPU_OK)
        return e;
    return parse_profile_into(profile, p);
}

static struct updlrm_emu_set *set_create(uint32_t nr, uint32_t per_rank)
{
    struct updlrm_emu_set *s = (struct updlrm_emu_set *)calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->dpus = (struct emu_dpu *)calloc(nr, sizeof *s->dpus);
    if (!s->dpus) {
        free(s);
        return NULL;
    }
    s->nr_dpus = nr;
    s->dpus_per_rank = per_rank;
    s->nr_ranks = (nr + per_rank - 1) / per_rank;
    s->ranks = (struct dpu_rank_t *)calloc(s->nr_ranks, sizeof *s->ranks);
    s->rank_ptrs = (struct dpu_rank_t **)calloc(s->nr_ranks, sizeof *s->rank_ptrs);
    if (!s->ranks || !s->rank_ptrs) {
        free(s->ranks);
        free(s->rank_ptrs);
        free(s->dpus);
        free(s);
        return NULL;
    }
    for (uint32_t r = 0; r < s->nr_ranks; r++) {
        s->ranks[r].set = s;
        s->ranks[r].first = r * per_rank;
        s->ranks[r].count = nr - r * per_rank < per_rank ? nr - r * per_rank : per_rank;
        s->rank_ptrs[r] = &s->ranks[r];
    }
    pthread_mutex_init(&s->lock, NULL);
    for (uint32_t i = 0; i < nr; i++) {
        s->dpus[i].fault_tasklet = EMU_NO_TASKLET;
        s->dpus[i].owner = s;
        s->dpus[i].index = i;
    }
    s->magic = EMU_SET_MAGIC;
    return s;
}

EMU_API dpu_error_t dpu_alloc(uint32_t nr_dpus, const char *profile, struct dpu_set_t *dpu_set)
{
    if (!dpu_set)
        return fail(DPU_ERR_INVALID_DPU_SET, "dpu_alloc: dpu_set is NULL");
    struct emu_profile p;
    dpu_error_t e = parse_profile(profile, &p);
    if (e != DPU_OK)
        return e;
    uint32_t n = nr_dpus == DPU_ALLOCATE_ALL ? p.system_dpus : nr_dpus;
    if (n == 0 || n > EMU_MAX_DPUS)
        return fail(DPU_ERR_ALLOCATION, "dpu_alloc: %u DPUs requested; the emulator allocates 1..%u", n, EMU_MAX_DPUS);
    struct updlrm_emu_set *s = set_create(n, p.dpus_per_rank);
    if (!s)
        return fail(DPU_ERR_ALLOCATION, "dpu_alloc: out of host memory for %u DPUs", n);
    s->fault_tasklet = EMU_NO_TASKLET;
    /* A per-set worker count from the profile overrides dpu_emu_set_workers() for this set. */
    s->profile_workers = p.workers;
    s->opt_policy = p.policy;
    s->opt_strict = p.strict;
    s->opt_seed = p.seed;
    s->timeout_ms = p.timeout_ms;
    *dpu_set = handle_of_set(s);
    return DPU_OK;
}

EMU_API dpu_error_t dpu_alloc_ranks(uint32_t nr_ranks, const char *profile, struct dpu_set_t *dpu_set)
{
    struct emu_profile p;
    dpu_error_t e = parse_profile(profile, &p);
    if (e != DPU_OK)
        return e;
    if (nr_ranks == DPU_ALLOCATE_ALL)
        return dpu_alloc(DPU_ALLOCATE_ALL, profile, dpu_set);
    if (nr_ranks == 0 || (uint64_t)nr_ranks * p.dpus_per_rank > EMU_MAX_DPUS)
        return fail(DPU_ERR_ALLOCATION, "dpu_alloc_ranks: %u ranks of %u DPUs is outside 1..%u DPUs", nr_ranks,
                    p.dpus_per_rank, EMU_MAX_DPUS);
    return dpu_alloc(nr_ranks * p.dpus_per_rank, profile, dpu_set);
}

/* ------------------------------------------------------------------------------------------ */
/* Programs                                                                                    */

struct emu_symbol {
    char *name;
    uint64_t value, size;
};

struct emu_program_ext {
    struct emu_program p;
    struct emu_symbol *syms;
    size_t nr_syms;
};

static void program_free(struct emu_program *p)
{
    if (!p)
        return;
    for (uint32_t i = 0; i < p->nr_images; i++) {
        if (p->scheds)
            emu_sched_fini(&p->scheds[i]);
        if (p->images && p->images[i].handle)
            dlclose(p->images[i].handle);
    }
    free(p->scheds);
    free(p->images);
    free(p->wram_pristine);
    free(p->mram_init);
    free(p->path);
    struct emu_program_ext *x = (struct emu_program_ext *)p;
    for (size_t i = 0; i < x->nr_syms; i++)
        free(x->syms[i].name);
    free(x->syms);
    free(x);
}

static int read_file(const char *path, uint8_t **data, size_t *size)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return -1;
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || st.st_size <= 0) {
        fclose(f);
        return -2;
    }
    *size = (size_t)st.st_size;
    *data = (uint8_t *)malloc(*size);
    if (!*data || fread(*data, 1, *size, f) != *size) {
        free(*data);
        fclose(f);
        return -2;
    }
    fclose(f);
    return 0;
}

/* Collects the defined data symbols (name, value, size) of the kernel from its .dynsym. */
static dpu_error_t parse_symbols(const uint8_t *data, size_t size, const char *path, struct emu_program_ext *x)
{
    if (size < sizeof(Elf64_Ehdr) || memcmp(data, ELFMAG, SELFMAG) != 0 || data[EI_CLASS] != ELFCLASS64)
        return fail(DPU_ERR_ELF_INVALID_FILE, "%s is not a 64-bit ELF shared object (an emulator kernel .emu.so)",
                    path);
    const Elf64_Ehdr *eh = (const Elf64_Ehdr *)data;
    if (eh->e_shoff == 0 || eh->e_shoff + (uint64_t)eh->e_shnum * sizeof(Elf64_Shdr) > size)
        return fail(DPU_ERR_ELF_INVALID_FILE, "%s: truncated ELF section table", path);
    const Elf64_Shdr *sh = (const Elf64_Shdr *)(data + eh->e_shoff);
    for (unsigned i = 0; i < eh->e_shnum; i++) {
        if (sh[i].sh_type != SHT_DYNSYM)
            continue;
        if (sh[i].sh_link >= eh->e_shnum)
            break;
        const Elf64_Shdr *strsh = &sh[sh[i].sh_link];
        if (sh[i].sh_offset + sh[i].sh_size > size || strsh->sh_offset + strsh->sh_size > size)
            break;
        const Elf64_Sym *sym = (const Elf64_Sym *)(data + sh[i].sh_offset);
        size_t n = sh[i].sh_size / sizeof(Elf64_Sym);
        const char *str = (const char *)(data + strsh->sh_offset);
        x->syms = (struct emu_symbol *)calloc(n ? n : 1, sizeof *x->syms);
        if (!x->syms)
            return fail(DPU_ERR_ALLOCATION, "out of host memory");
        for (size_t k = 0; k < n; k++) {
            if (sym[k].st_shndx == SHN_UNDEF || sym[k].st_name >= strsh->sh_size)
                continue;
            if (ELF64_ST_TYPE(sym[k].st_info) != STT_OBJECT && ELF64_ST_TYPE(sym[k].st_info) != STT_NOTYPE)
                continue;
            x->syms[x->nr_syms].name = strdup(str + sym[k].st_name);
            x->syms[x->nr_syms].value = sym[k].st_value;
            x->syms[x->nr_syms].size = sym[k].st_size;
            x->nr_syms++;
        }
        return DPU_OK;
    }
    return fail(DPU_ERR_ELF_INVALID_FILE, "%s has no dynamic symbol table", path);
}

static void *need_sym(void *h, const char *name) { return dlsym(h, name); }

/* dlopen()s a private copy of the kernel (dlopen of one path twice would share its globals). */
static dpu_error_t image_open(struct emu_image *img, const uint8_t *data, size_t size, const char *path)
{
    char tmp[4096];
    const char *dir = getenv("TMPDIR");
    snprintf(tmp, sizeof tmp, "%s/updlrm-emu-kernel-XXXXXX.so", dir && *dir ? dir : "/tmp");
    int fd = mkstemps(tmp, 3);
    if (fd < 0)
        return fail(DPU_ERR_SYSTEM, "cannot create a temporary copy of %s: %s", path, strerror(errno));
    size_t done = 0;
    while (done < size) {
        ssize_t w = write(fd, data + done, size - done);
        if (w <= 0) {
            close(fd);
            unlink(tmp);
            return fail(DPU_ERR_SYSTEM, "cannot write a temporary copy of %s: %s", path, strerror(errno));
        }
        done += (size_t)w;
    }
    close(fd);
    img->handle = dlopen(tmp, RTLD_NOW | RTLD_LOCAL);
    unlink(tmp);
    if (!img->handle)
        return fail(DPU_ERR_ELF_INVALID_FILE, "cannot load %s: %s", path, dlerror());
    img->rt_slot = (const struct updlrm_emu_rt **)need_sym(img->handle, "__updlrm_emu_rt");
    img->main_fn = (int (*)(void))need_sym(img->handle, "main");
    img->wram_start = (uint8_t *)need_sym(img->handle, "__updlrm_wram_start");
    img->wram_end = (uint8_t *)need_sym(img->handle, "__updlrm_wram_end");
    img->mram_start = (uint8_t *)need_sym(img->handle, "__updlrm_mram_start");
    img->mram_end = (uint8_t *)need_sym(img->handle, "__updlrm_mram_end");
    img->mramz_start = (uint8_t *)need_sym(img->handle, "__updlrm_mramz_start");
    img->mramz_end = (uint8_t *)need_sym(img->handle, "__updlrm_mramz_end");
    if (!img->rt_slot)
        return fail(DPU_ERR_ELF_INVALID_FILE,
                    "%s is not an emulator kernel (no __updlrm_emu_rt): build it with updlrm_add_emu_kernel() "
                    "or updlrm.emu.compile_kernel() against host/emu/include",
                    path);
    if (!img->main_fn)
        return fail(DPU_ERR_ELF_INVALID_FILE, "%s has no main() for the tasklets to run", path);
    /* Empty sections may not resolve: treat them as empty ranges. A kernel not linked with
     * kernel.ld has none of the markers and would silently share WRAM across DPUs: refuse it. */
    void *any_marker = dlsym(img->handle, "__updlrm_wram_end");
    if (!any_marker)
        any_marker = dlsym(img->handle, "__updlrm_mram_end");
    if (!any_marker)
        any_marker = dlsym(img->handle, "__updlrm_mramz_end");
    if (!any_marker && !dlsym(img->handle, "__updlrm_wram_start"))
        return fail(DPU_ERR_ELF_INVALID_FILE,
                    "%s was not linked with host/emu/kernel.ld (no __updlrm_wram_start/__updlrm_wram_end "
                    "symbols): build it with updlrm_add_emu_kernel() or updlrm.emu.compile_kernel()",
                    path);
    if (!img->wram_start || !img->wram_end || img->wram_end < img->wram_start)
        img->wram_start = img->wram_end = NULL;
    if (!img->mram_start || !img->mram_end || img->mram_end < img->mram_start)
        img->mram_start = img->mram_end = NULL;
    if (!img->mramz_start || !img->mramz_end || img->mramz_end < img->mramz_start)
        img->mramz_start = img->mramz_end = NULL;
    *img->rt_slot = &emu_rt_table;
    return DPU_OK;
}

static uint32_t worker_count(struct updlrm_emu_set *s)
{
    uint32_t w = s->profile_workers ? s->profile_workers : __atomic_load_n(&g_workers, __ATOMIC_RELAXED);
    if (w == 0) {
        long c = sysconf(_SC_NPROCESSORS_ONLN);
        w = c > 0 ? (uint32_t)c : 1;
    }
    if (w > s->nr_dpus)
        w = s->nr_dpus;
    return w ? w : 1;
}

EMU_API dpu_error_t dpu_load(struct dpu_set_t h, const char *binary_path, struct dpu_program_t **program)
{
    struct hview v;
    dpu_error_t e = check_handle(h, &v);
    if (e != DPU_OK)
        return e;
    struct updlrm_emu_set *s = v.set;
    if (v.first != 0 || v.count != s->nr_dpus)
        return fail(DPU_ERR_INVALID_DPU_SET, "dpu_load: the emulator loads a program into a whole set only");
    if (!binary_path)
        return fail(DPU_ERR_ELF_NO_SUCH_FILE, "dpu_load: binary_path is NULL");
    wait_idle(s);

    uint8_t *data = NULL;
    size_t size = 0;
    int r = read_file(binary_path, &data, &size);
    if (r == -1)
        return fail(DPU_ERR_ELF_NO_SUCH_FILE, "dpu_load: cannot open %s: %s", binary_path, strerror(errno));
    if (r != 0)
        return fail(DPU_ERR_ELF_INVALID_FILE, "dpu_load: cannot read %s (empty or unreadable)", binary_path);

    struct emu_program_ext *x = (struct emu_program_ext *)calloc(1, sizeof *x);
    struct emu_program *p = &x->p;
    if (!x) {
        free(data);
        return fail(DPU_ERR_ALLOCATION, "out of host memory");
    }
    e = parse_symbols(data, size, binary_path, x);
    uint32_t w = worker_count(s);
    if (e == DPU_OK) {
        p->nr_images = w;
        p->images = (struct emu_image *)calloc(w, sizeof *p->images);
        p->scheds = (struct emu_sched *)calloc(w, sizeof *p->scheds);
        if (!p->images || !p->scheds)
            e = fail(DPU_ERR_ALLOCATION, "out of host memory");
    }
    for (uint32_t i = 0; e == DPU_OK && i < w; i++)
        e = image_open(&p->images[i], data, size, binary_path);
    free(data);
    if (e != DPU_OK) {
        program_free(p);
        return e;
    }

    struct emu_image *img = &p->images[0];
    const uint32_t *nt = (const uint32_t *)dlsym(img->handle, "__updlrm_emu_nr_tasklets");
    const uint32_t *ss = (const uint32_t *)dlsym(img->handle, "__updlrm_emu_stack_size");
    const uint32_t *strict = (const uint32_t *)dlsym(img->handle, "__updlrm_emu_strict");
    const uint32_t *race_free = (const uint32_t *)dlsym(img->handle, "__updlrm_emu_race_free");
    p->nr_tasklets = nt ? *nt : 1;
    p->stack_size = ss ? *ss : 1024;
    p->strict_default = strict ? (*strict != 0) : 1;
    p->race_free = race_free ? (*race_free != 0) : 0;
    p->path = strdup(binary_path);
    p->wram_size = (size_t)(img->wram_end - img->wram_start);
    size_t mram_init = (size_t)(img->mram_end - img->mram_start);
    size_t mramz = (size_t)(img->mramz_end - img->mramz_start);
    const uint32_t *rt_version = (const uint32_t *)dlsym(img->handle, "__updlrm_emu_rt_version");
    if (!rt_version || *rt_version != UPDLRM_EMU_RT_VERSION) {
        uint32_t got = rt_version ? *rt_version : 0;
        program_free(p);
        return fail(DPU_ERR_ELF_INVALID_FILE,
                    "dpu_load: %s was built against emulator runtime headers of version %u, this emulator is %u: "
                    "rebuild the kernel (dpu-upmem-dpurte-clang, compile_kernel or the CMake build)",
                    binary_path, got, UPDLRM_EMU_RT_VERSION);
    }
    if (p->nr_tasklets == 0 || p->nr_tasklets > EMU_MAX_TASKLETS) {
        program_free(p);
        return fail(DPU_ERR_ELF_INVALID_FILE, "dpu_load: %s was built with NR_TASKLETS=%u; allowed 1..%u", binary_path,
                    p->nr_tasklets, EMU_MAX_TASKLETS);
    }
    if (mram_init + mramz + 16 > EMU_MRAM_SIZE) {
        program_free(p);
        return fail(DPU_ERR_ELF_INVALID_FILE, "dpu_load: %s has %zu bytes of static MRAM variables; MRAM holds %u",
                    binary_path, mram_init + mramz, EMU_MRAM_SIZE);
    }
    uint64_t wram_static = (uint64_t)p->wram_size + (uint64_t)p->nr_tasklets * p->stack_size;
    if (wram_static > EMU_WRAM_SIZE) {
        pthread_mutex_lock(&s->lock);
        s->has_fault = 1;
        s->fault_dpu = 0;
        s->fault_tasklet = EMU_NO_TASKLET;
        snprintf(s->fault_msg, sizeof s->fault_msg,
                 "WRAM over budget at load (every DPU): %zu B of WRAM globals + %u tasklets x %u B stacks "
                 "(STACK_SIZE_DEFAULT) = %llu B > %u B of WRAM",
                 p->wram_size, p->nr_tasklets, p->stack_size, (unsigned long long)wram_static, EMU_WRAM_SIZE);
        pthread_mutex_unlock(&s->lock);
        e = fail(DPU_ERR_DPU_FAULT, "dpu_load: %s: %s", binary_path, s->fault_msg);
        program_free(p);
        return e;
    }
    p->wram_static = (uint32_t)wram_static;
    p->heap_limit = EMU_WRAM_SIZE - p->wram_static;
    p->mram_init_size = (uint32_t)((mram_init + 7) & ~(size_t)7);
    p->mram_static = p->mram_init_size + (uint32_t)((mramz + 7) & ~(size_t)7);
    /* Initial WRAM per image: statically initialized pointers (e.g. `int *p = arr;`) point
     * into their own image, so DPU d starts from the copy of image d % w. */
    p->wram_pristine = (uint8_t *)malloc(p->wram_size ? (size_t)w * p->wram_size : 1);
    p->mram_init = (uint8_t *)malloc(mram_init ? mram_init : 1);
    if (!p->wram_pristine || !p->mram_init) {
        program_free(p);
        return fail(DPU_ERR_ALLOCATION, "out of host memory");
    }
    for (uint32_t i = 0; i < w; i++)
        memcpy(p->wram_pristine + (size_t)i * p->wram_size, p->images[i].wram_start, p->wram_size);
    memcpy(p->mram_init, img->mram_start, mram_init);
    /* Static MRAM variables a kernel may touch directly: see the mirror in sched.c. */
    for (uint32_t i = 0; i < w; i++)
        emu_mirror_init(&p->images[i]);
    emu_signals_install();
    for (uint32_t i = 0; i < w; i++) {
        if (emu_sched_init(&p->scheds[i], p, &p->images[i]) != 0) {
            program_free(p);
            return fail(DPU_ERR_ALLOCATION, "dpu_load: out of host memory for tasklet stacks");
        }
    }

    /* Per-DPU state for the new program. */
    uint8_t **wram = (uint8_t **)calloc(s->nr_dpus, sizeof *wram);
    if (!wram) {
        program_free(p);
        return fail(DPU_ERR_ALLOCATION, "out of host memory");
    }
    for (uint32_t d = 0; d < s->nr_dpus; d++) {
        wram[d] = (uint8_t *)malloc(p->wram_size ? p->wram_size : 1);
        if (!wram[d]) {
            for (uint32_t k = 0; k < d; k++)
                free(wram[k]);
            free(wram);
            program_free(p);
            return fail(DPU_ERR_ALLOCATION, "out of host memory for %u DPUs' WRAM", s->nr_dpus);
        }
        memcpy(wram[d], p->wram_pristine + (size_t)(d % w) * p->wram_size, p->wram_size);
    }
    /* Commit: nothing below fails except MRAM page allocation for initialized __mram data. */
    program_free(s->prog);
    s->prog = p;
    for (uint32_t d = 0; d < s->nr_dpus; d++) {
        struct emu_dpu *dp = &s->dpus[d];
        free(dp->wram_saved);
        dp->wram_saved = wram[d];
        dp->heap_top = 0;
        dp->heap_saved_len = 0;
        dp->counters.wram_static_bytes = p->wram_static;
        dp->counters.nr_tasklets = p->nr_tasklets;
        if (mram_init && emu_mram_write(dp, 0, p->mram_init, mram_init) != 0)
            e = fail(DPU_ERR_ALLOCATION, "out of host memory for MRAM");
    }
    free(wram);
    if (program)
        *program = (struct dpu_program_t *)p;
    return e;
}

EMU_API dpu_error_t dpu_free(struct dpu_set_t h)
{
    struct hview v;
    dpu_error_t e = check_handle(h, &v);
    if (e != DPU_OK)
        return e;
    struct updlrm_emu_set *s = v.set;
    if (v.first != 0 || v.count != s->nr_dpus)
        return fail(DPU_ERR_INVALID_DPU_SET, "dpu_free: pass the whole set returned by dpu_alloc");
    wait_idle(s);
    program_free(s->prog);
    for (uint32_t d = 0; d < s->nr_dpus; d++) {
        struct emu_dpu *dp = &s->dpus[d];
        for (uint32_t pg = 0; pg < EMU_NR_PAGES; pg++)
            free(dp->mram_pages[pg]);
        free(dp->wram_saved);
        free(dp->heap_saved);
        free(dp->log);
    }
    free(s->dpus);
    free(s->ranks);
    free(s->rank_ptrs);
    s->magic = 0;
    pthread_mutex_destroy(&s->lock);
    free(s);
    return DPU_OK;
}

EMU_API dpu_error_t dpu_get_nr_dpus(struct dpu_set_t h, uint32_t *nr_dpus)
{
    struct hview v;
    dpu_error_t e = check_handle(h, &v);
    if (e != DPU_OK)
        return e;
    if (nr_dpus)
        *nr_dpus = v.count;
    return DPU_OK;
}

EMU_API dpu_error_t dpu_get_nr_ranks(struct dpu_set_t h, uint32_t *nr_ranks)
{
    struct hview v;
    dpu_error_t e = check_handle(h, &v);
    if (e != DPU_OK)
        return e;
    if (nr_ranks) {
        uint32_t per = v.set->dpus_per_rank;
        uint32_t first_rank = v.first / per, last_rank = (v.first + v.count - 1) / per;
        *nr_ranks = last_rank - first_rank + 1;
    }
    return DPU_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* Launch                                                                                      */

struct run_job {
    struct updlrm_emu_set *set;
    uint32_t image, first, count;
};

static void *run_worker(void *arg)
{
    struct run_job *j = (struct run_job *)arg;
    emu_sched_run(&j->set->prog->scheds[j->image], j->set, j->image, j->first, j->count);
    return NULL;
}

/* Runs DPUs [first, first+count) over the program's images (one thread per image in use). */
static dpu_error_t run_range(struct updlrm_emu_set *s, uint32_t first, uint32_t count)
{
    struct emu_program *p = s->prog;
    uint32_t w = p->nr_images;
    /* Only images that own a DPU of the range have work: DPU d runs on image d % w. */
    uint32_t n = count < w ? count : w;
    struct run_job *jobs = (struct run_job *)calloc(n, sizeof *jobs);
    pthread_t *threads = (pthread_t *)calloc(n, sizeof *threads);
    int *started = (int *)calloc(n, sizeof *started);
    if (!jobs || !threads || !started) {
        free(jobs);
        free(threads);
        free(started);
        return fail(DPU_ERR_ALLOCATION, "dpu_launch: out of host memory");
    }
    emu_signals_install();
    uint64_t deadline = s->timeout_ms ? emu_now_ns() + (uint64_t)s->timeout_ms * 1000000ull : 0;
    for (uint32_t i = 0; i < w; i++)
        p->scheds[i].deadline_ns = deadline;
    s->launch_no++;
    for (uint32_t k = 0; k < n; k++)
        jobs[k] = (struct run_job){s, (first + k) % w, first, count};
    for (uint32_t k = 1; k < n; k++)
        started[k] = pthread_create(&threads[k], NULL, run_worker, &jobs[k]) == 0;
    for (uint32_t k = 1; k < n; k++)
        if (!started[k])
            run_worker(&jobs[k]); /* thread creation failed: run it here */
    run_worker(&jobs[0]);
    for (uint32_t k = 1; k < n; k++)
        if (started[k])
            pthread_join(threads[k], NULL);
    free(jobs);
    free(threads);
    free(started);

    uint32_t faulted = 0;
    for (uint32_t d = first; d < first + count; d++) {
        struct emu_dpu *dp = &s->dpus[d];
        if (!dp->counters.faulted)
            continue;
        if (!faulted) {
            pthread_mutex_lock(&s->lock);
            s->has_fault = 1;
            s->fault_dpu = d;
            s->fault_tasklet = dp->fault_tasklet;
            snprintf(s->fault_msg, sizeof s->fault_msg, "%s", dp->fault_msg);
            pthread_mutex_unlock(&s->lock);
        }
        faulted++;
    }
    s->last_launch_faulted = faulted != 0;
    if (faulted)
        return fail(DPU_ERR_DPU_FAULT, "DPU %u faulted (%u DPUs in all): %s", s->fault_dpu, faulted, s->fault_msg);
    return DPU_OK;
}

static void *async_main(void *arg)
{
    struct updlrm_emu_set *s = (struct updlrm_emu_set *)arg;
    dpu_error_t e = run_range(s, s->run_first, s->run_count);
    __atomic_store_n(&s->async_result, e, __ATOMIC_RELEASE);
    __atomic_store_n(&s->last_launch_faulted, e == DPU_ERR_DPU_FAULT, __ATOMIC_RELEASE);
    return NULL;
}

EMU_API dpu_error_t dpu_launch(struct dpu_set_t h, dpu_launch_policy_t policy)
{
    struct hview v;
    dpu_error_t e = check_handle(h, &v);
    if (e != DPU_OK)
        return e;
    struct updlrm_emu_set *s = v.set;
    if (policy != DPU_SYNCHRONOUS && policy != DPU_ASYNCHRONOUS)
        return fail(DPU_ERR_INVALID_LAUNCH_POLICY, "dpu_launch: policy %d is neither DPU_SYNCHRONOUS nor DPU_ASYNCHRONOUS",
                    (int)policy);
    wait_idle(s);
    if (!s->prog)
        return fail(DPU_ERR_NO_PROGRAM_LOADED, "dpu_launch: no program loaded (call dpu_load first)");
    if (policy == DPU_SYNCHRONOUS)
        return run_range(s, v.first, v.count);
    pthread_mutex_lock(&s->lock);
    s->run_first = v.first;
    s->run_count = v.count;
    s->async_result = DPU_OK;
    if (pthread_create(&s->async_thread, NULL, async_main, s) != 0) {
        pthread_mutex_unlock(&s->lock);
        return run_range(s, v.first, v.count);
    }
    s->async_running = 1;
    pthread_mutex_unlock(&s->lock);
    return DPU_OK;
}

EMU_API dpu_error_t dpu_sync(struct dpu_set_t h)
{
    struct hview v;
    dpu_error_t e = check_handle(h, &v);
    if (e != DPU_OK)
        return e;
    struct updlrm_emu_set *s = v.set;
    wait_idle(s);
    e = __atomic_load_n(&s->async_result, __ATOMIC_ACQUIRE);
    s->async_result = DPU_OK;
    if (e == DPU_ERR_DPU_FAULT)
        return fail(DPU_ERR_DPU_FAULT, "DPU %u faulted: %s", s->fault_dpu, s->fault_msg);
    return e;
}

EMU_API dpu_error_t dpu_status(struct dpu_set_t h, bool *done, bool *fault)
{
    struct hview v;
    dpu_error_t e = check_handle(h, &v);
    if (e != DPU_OK)
        return e;
    struct updlrm_emu_set *s = v.set;
    int running = 0;
    pthread_mutex_lock(&s->lock);
    if (s->async_running) {
        /* Finished threads are joined lazily; pthread_tryjoin_np tells without blocking. */
        if (pthread_tryjoin_np(s->async_thread, NULL) == 0)
            s->async_running = 0;
        else
            running = 1;
    }
    pthread_mutex_unlock(&s->lock);
    if (done)
        *done = !running;
    if (fault) {
        int any = 0;
        if (!running)
            for (uint32_t d = v.first; d < v.first + v.count; d++)
                any |= s->dpus[d].counters.faulted;
        *fault = any != 0;
    }
    return DPU_OK;
}

/* Runs callback(set, rank index, args) for every rank of the set (or once with the whole set
 * for DPU_CALLBACK_SINGLE_CALL). The emulator runs asynchronous callbacks at once, after any
 * launch in progress: they are done when dpu_sync() returns, as the SDK guarantees. */
EMU_API dpu_error_t dpu_callback(struct dpu_set_t h, dpu_error_t (*callback)(struct dpu_set_t, uint32_t, void *),
                                 void *args, dpu_callback_flags_t flags)
{
    struct hview v;
    dpu_error_t e = check_handle(h, &v);
    if (e != DPU_OK)
        return e;
    if (!callback)
        return fail(DPU_ERR_INTERNAL, "dpu_callback: callback is NULL");
    if (!(flags & DPU_CALLBACK_ASYNC) && (flags & DPU_CALLBACK_NONBLOCKING))
        return fail(DPU_ERR_NONBLOCKING_SYNC_CALLBACK, "dpu_callback: DPU_CALLBACK_NONBLOCKING needs DPU_CALLBACK_ASYNC");
    wait_idle(v.set);
    if ((flags & DPU_CALLBACK_SINGLE_CALL) && (flags & DPU_CALLBACK_ASYNC))
        return callback(h, 0, args);
    uint32_t nr = updlrm_emu_set_nr_ranks(h);
    for (uint32_t r = 0; r < nr; r++) {
        dpu_error_t ce = callback(updlrm_emu_set_rank(h, r), r, args);
        if (ce != DPU_OK)
            return ce;
    }
    return DPU_OK;
}

EMU_API dpu_error_t dpu_emu_set_schedule(struct dpu_set_t h, int policy, uint64_t seed)
{
    struct hview v;
    dpu_error_t e = check_handle(h, &v);
    if (e != DPU_OK)
        return e;
    if (policy < EMU_POLICY_RR || policy > EMU_POLICY_RUN)
        return fail(DPU_ERR_INVALID_PROFILE, "dpu_emu_set_schedule: policy %d is not RR (0), RANDOM (1) or RUN (2)",
                    policy);
    wait_idle(v.set);
    v.set->opt_policy = policy;
    v.set->opt_seed = seed;
    v.set->launch_no = 0; /* the same seed gives the same schedules */
    return DPU_OK;
}

EMU_API dpu_error_t dpu_emu_set_timeout(struct dpu_set_t h, uint32_t timeout_ms)
{
    struct hview v;
    dpu_error_t e = check_handle(h, &v);
    if (e != DPU_OK)
        return e;
    wait_idle(v.set);
    v.set->timeout_ms = timeout_ms;
    return DPU_OK;
}

EMU_API dpu_error_t dpu_emu_set_strict(struct dpu_set_t h, int strict)
{
    struct hview v;
    dpu_error_t e = check_handle(h, &v);
    if (e != DPU_OK)
        return e;
    if (strict < -1 || strict > 1)
        return fail(DPU_ERR_INVALID_PROFILE, "dpu_emu_set_strict: %d is not -1, 0 or 1", strict);
    wait_idle(v.set);
    v.set->opt_strict = strict;
    return DPU_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* Symbols and transfers                                                                       */

struct emu_sym_ref {
    int is_mram;
    uint32_t base; /* MRAM offset, or offset in the WRAM globals */
    uint64_t size;
};

static dpu_error_t resolve_in(struct emu_program *p, const char *name, struct emu_sym_ref *r)
{
    if (!p)
        return fail(DPU_ERR_NO_PROGRAM_LOADED, "no program loaded (call dpu_load first)");
    if (!name)
        return fail(DPU_ERR_UNKNOWN_SYMBOL, "symbol name is NULL");
    if (!strcmp(name, DPU_MRAM_HEAP_POINTER_NAME)) {
        r->is_mram = 1;
        r->base = p->mram_static;
        r->size = EMU_MRAM_SIZE - p->mram_static;
        return DPU_OK;
    }
    struct emu_program_ext *x = (struct emu_program_ext *)p;
    const struct emu_symbol *sym = NULL;
    for (size_t i = 0; i < x->nr_syms; i++)
        if (!strcmp(x->syms[i].name, name)) {
            sym = &x->syms[i];
            break;
        }
    const struct emu_image *img = &p->images[0];
    uint8_t *addr = sym ? (uint8_t *)dlsym(img->handle, name) : NULL;
    if (!sym || !addr)
        return fail(DPU_ERR_UNKNOWN_SYMBOL, "symbol '%s' is not defined by the loaded kernel", name);
    if (addr >= img->wram_start && addr < img->wram_end) {
        r->is_mram = 0;
        r->base = (uint32_t)(addr - img->wram_start);
        r->size = sym->size ? sym->size : (uint64_t)(img->wram_end - addr);
    } else if (addr >= img->mram_start && addr < img->mram_end) {
        r->is_mram = 1;
        r->base = (uint32_t)(addr - img->mram_start);
        r->size = sym->size ? sym->size : (uint64_t)(img->mram_end - addr);
    } else if (addr >= img->mramz_start && addr < img->mramz_end) {
        r->is_mram = 1;
        r->base = p->mram_init_size + (uint32_t)(addr - img->mramz_start);
        r->size = sym->size ? sym->size : (uint64_t)(img->mramz_end - addr);
    } else {
        return fail(DPU_ERR_INVALID_SYMBOL_ACCESS,
                    "symbol '%s' is not a writable WRAM (__host/global) or MRAM (__mram) variable of the kernel", name);
    }
    return DPU_OK;
}

static dpu_error_t resolve(struct updlrm_emu_set *s, const char *name, struct emu_sym_ref *r)
{
    return resolve_in(s->prog, name, r);
}

/* A struct dpu_symbol_t back to what it designates (see dpu_get_symbol). */
static dpu_error_t resolve_symbol(struct updlrm_emu_set *s, struct dpu_symbol_t sym, struct emu_sym_ref *r)
{
    if (!s->prog)
        return fail(DPU_ERR_NO_PROGRAM_LOADED, "no program loaded (call dpu_load first)");
    if (sym.address >= EMU_MRAM_BASE) {
        r->is_mram = 1;
        r->base = sym.address - EMU_MRAM_BASE;
        if ((uint64_t)r->base + sym.size > EMU_MRAM_SIZE)
            return fail(DPU_ERR_INVALID_SYMBOL_ACCESS, "symbol at 0x%08x (%u bytes) runs past MRAM", sym.address, sym.size);
    } else {
        r->is_mram = 0;
        r->base = sym.address;
        if ((uint64_t)sym.address + sym.size > s->prog->wram_size)
            return fail(DPU_ERR_INVALID_SYMBOL_ACCESS, "symbol at WRAM 0x%08x (%u bytes) is not inside the WRAM globals",
                        sym.address, sym.size);
    }
    r->size = sym.size;
    return DPU_OK;
}

EMU_API size_t dpu_emu_list_symbols(struct dpu_set_t h, char *buf, size_t len)
{
    struct hview v;
    if (buf && len)
        buf[0] = '\0';
    if (check_handle(h, &v) != DPU_OK || !v.set->prog)
        return 0;
    struct emu_program_ext *x = (struct emu_program_ext *)v.set->prog;
    size_t need = 0;
    for (size_t i = 0; i < x->nr_syms; i++) {
        const char *name = x->syms[i].name;
        struct emu_sym_ref r;
        if (!strncmp(name, "__updlrm", 8) || x->syms[i].size == 0)
            continue;
        dpu_error_t saved_code = tls_error_code;
        char saved[EMU_MSG_LEN];
        memcpy(saved, tls_error, sizeof saved);
        int ok = resolve_in(&x->p, name, &r) == DPU_OK;
        tls_error_code = saved_code;
        memcpy(tls_error, saved, sizeof saved);
        if (!ok)
            continue;
        char line[600];
        int n = snprintf(line, sizeof line, "%s %c %u %llu\n", name, r.is_mram ? 'M' : 'W',
                         r.is_mram ? EMU_MRAM_BASE + r.base : r.base, (unsigned long long)r.size);
        if (n <= 0)
            continue;
        if (buf && need + (size_t)n < len)
            memcpy(buf + need, line, (size_t)n + 1);
        need += (size_t)n;
    }
    return need;
}

EMU_API dpu_error_t dpu_get_symbol(struct dpu_program_t *program, const char *symbol_name, struct dpu_symbol_t *symbol)
{
    struct emu_sym_ref r;
    if (!program || !symbol)
        return fail(DPU_ERR_INTERNAL, "dpu_get_symbol: program or symbol is NULL");
    dpu_error_t e = resolve_in((struct emu_program *)program, symbol_name, &r);
    if (e != DPU_OK)
        return e;
    symbol->address = r.is_mram ? EMU_MRAM_BASE + r.base : r.base;
    symbol->size = r.size > 0xffffffffu ? 0xffffffffu : (uint32_t)r.size;
    return DPU_OK;
}

static dpu_error_t check_access(const struct emu_sym_ref *r, const char *name, uint32_t offset, size_t length)
{
    if ((uint64_t)offset > r->size || (uint64_t)length > r->size - offset)
        return fail(DPU_ERR_INVALID_SYMBOL_ACCESS,
                    "symbol '%s': offset %u + length %zu exceeds its size of %llu bytes", name, offset, length,
                    (unsigned long long)r->size);
    if (r->is_mram) {
        if ((r->base + offset) % 8 != 0 || length % 8 != 0)
            return fail(DPU_ERR_INVALID_MRAM_ACCESS,
                        "symbol '%s' (MRAM): offset %u and length %zu must be multiples of 8", name, offset, length);
    } else if ((r->base + offset) % 4 != 0 || length % 4 != 0) {
        return fail(DPU_ERR_INVALID_WRAM_ACCESS, "symbol '%s' (WRAM): offset %u and length %zu must be multiples of 4",
                    name, offset, length);
    }
    return DPU_OK;
}

static dpu_error_t dpu_write(struct updlrm_emu_set *s, uint32_t d, const struct emu_sym_ref *r, uint32_t offset,
                             const void *src, size_t length)
{
    struct emu_dpu *dp = &s->dpus[d];
    if (r->is_mram) {
        if (emu_mram_write(dp, r->base + offset, src, length) != 0)
            return fail(DPU_ERR_ALLOCATION, "out of host memory for DPU %u's MRAM", d);
    } else {
        memcpy(dp->wram_saved + r->base + offset, src, length);
    }
    dp->counters.host_to_dpu_bytes += length;
    return DPU_OK;
}

static void dpu_read(struct updlrm_emu_set *s, uint32_t d, const struct emu_sym_ref *r, uint32_t offset, void *dst,
                     size_t length)
{
    struct emu_dpu *dp = &s->dpus[d];
    if (r->is_mram)
        emu_mram_read(dp, r->base + offset, dst, length);
    else
        memcpy(dst, dp->wram_saved + r->base + offset, length);
    dp->counters.dpu_to_host_bytes += length;
}

/* Checks the handle, waits for a launch in progress, resolves the symbol (by name, or `sym` when
 * name is NULL) and checks the access. */
static dpu_error_t prepare_access(struct dpu_set_t h, struct hview *v, const char *name, const struct dpu_symbol_t *sym,
                                  uint32_t offset, size_t length, struct emu_sym_ref *r)
{
    dpu_error_t e = check_handle(h, v);
    if (e != DPU_OK)
        return e;
    wait_idle(v->set);
    e = name || !sym ? resolve(v->set, name, r) : resolve_symbol(v->set, *sym, r);
    if (e != DPU_OK)
        return e;
    return check_access(r, name ? name : "(symbol)", offset, length);
}

static dpu_error_t copy_to(struct dpu_set_t h, const char *name, const struct dpu_symbol_t *sym, uint32_t offset,
                           const void *src, size_t length)
{
    struct emu_sym_ref r;
    struct hview v;
    dpu_error_t e = prepare_access(h, &v, name, sym, offset, length, &r);
    if (e != DPU_OK)
        return e;
    if (length && !src)
        return fail(DPU_ERR_INVALID_MEMORY_TRANSFER, "dpu_copy_to: src is NULL");
    for (uint32_t d = v.first; d < v.first + v.count && length; d++)
        if ((e = dpu_write(v.set, d, &r, offset, src, length)) != DPU_OK)
            return e;
    return DPU_OK;
}

static dpu_error_t copy_from(struct dpu_set_t h, const char *name, const struct dpu_symbol_t *sym, uint32_t offset,
                             void *dst, size_t length)
{
    struct emu_sym_ref r;
    struct hview v;
    dpu_error_t e = prepare_access(h, &v, name, sym, offset, length, &r);
    if (e != DPU_OK)
        return e;
    if (v.count != 1)
        return fail(DPU_ERR_INVALID_DPU_SET, "dpu_copy_from takes a single DPU (use DPU_FOREACH), got %u", v.count);
    if (length && !dst)
        return fail(DPU_ERR_INVALID_MEMORY_TRANSFER, "dpu_copy_from: dst is NULL");
    if (length)
        dpu_read(v.set, v.first, &r, offset, dst, length);
    return DPU_OK;
}

EMU_API dpu_error_t dpu_copy_to(struct dpu_set_t h, const char *symbol_name, uint32_t symbol_offset, const void *src,
                                size_t length)
{
    if (!symbol_name)
        return fail(DPU_ERR_UNKNOWN_SYMBOL, "symbol name is NULL");
    return copy_to(h, symbol_name, NULL, symbol_offset, src, length);
}

EMU_API dpu_error_t dpu_copy_to_symbol(struct dpu_set_t h, struct dpu_symbol_t symbol, uint32_t symbol_offset,
                                       const void *src, size_t length)
{
    return copy_to(h, NULL, &symbol, symbol_offset, src, length);
}

EMU_API dpu_error_t dpu_broadcast_to(struct dpu_set_t h, const char *symbol_name, uint32_t symbol_offset,
                                     const void *src, size_t length, dpu_xfer_flags_t flags)
{
    (void)flags;
    return dpu_copy_to(h, symbol_name, symbol_offset, src, length);
}

EMU_API dpu_error_t dpu_broadcast_to_symbol(struct dpu_set_t h, struct dpu_symbol_t symbol, uint32_t symbol_offset,
                                            const void *src, size_t length, dpu_xfer_flags_t flags)
{
    (void)flags;
    return copy_to(h, NULL, &symbol, symbol_offset, src, length);
}

EMU_API dpu_error_t dpu_copy_from(struct dpu_set_t h, const char *symbol_name, uint32_t symbol_offset, void *dst,
                                  size_t length)
{
    if (!symbol_name)
        return fail(DPU_ERR_UNKNOWN_SYMBOL, "symbol name is NULL");
    return copy_from(h, symbol_name, NULL, symbol_offset, dst, length);
}

EMU_API dpu_error_t dpu_copy_from_symbol(struct dpu_set_t h, struct dpu_symbol_t symbol, uint32_t symbol_offset,
                                         void *dst, size_t length)
{
    return copy_from(h, NULL, &symbol, symbol_offset, dst, length);
}

/* Raw MRAM of one DPU: the offset and length must be multiples of 8 inside the 64 MiB. */
static dpu_error_t mram_raw(struct dpu_t *dpu, int to_dpu, uint32_t off, void *buf, size_t n, const char *what)
{
    struct hview v;
    dpu_error_t e = check_handle(dpu_set_from_dpu(dpu), &v);
    if (e != DPU_OK)
        return e;
    if ((uint64_t)off + n > EMU_MRAM_SIZE || off % 8 || n % 8)
        return fail(DPU_ERR_INVALID_MRAM_ACCESS,
                    "%s: MRAM offset %u and length %zu must be multiples of 8 inside the %u bytes of MRAM", what, off, n,
                    EMU_MRAM_SIZE);
    if (n && !buf)
        return fail(DPU_ERR_INVALID_MEMORY_TRANSFER, "%s: the host buffer is NULL", what);
    wait_idle(v.set);
    struct emu_dpu *dp = &v.set->dpus[v.first];
    if (to_dpu) {
        if (emu_mram_write(dp, off, buf, n) != 0)
            return fail(DPU_ERR_ALLOCATION, "%s: out of host memory for MRAM", what);
        dp->counters.host_to_dpu_bytes += n;
    } else {
        emu_mram_read(dp, off, buf, n);
        dp->counters.dpu_to_host_bytes += n;
    }
    return DPU_OK;
}

EMU_API dpu_error_t dpu_copy_to_mram(struct dpu_t *dpu, uint32_t mram_byte_offset, const uint8_t *source,
                                     size_t nb_of_bytes)
{
    return mram_raw(dpu, 1, mram_byte_offset, (void *)source, nb_of_bytes, "dpu_copy_to_mram");
}

EMU_API dpu_error_t dpu_copy_from_mram(struct dpu_t *dpu, uint8_t *destination, uint32_t mram_byte_offset,
                                       size_t nb_of_bytes)
{
    return mram_raw(dpu, 0, mram_byte_offset, destination, nb_of_bytes, "dpu_copy_from_mram");
}

EMU_API dpu_error_t dpu_prepare_xfer(struct dpu_set_t h, void *buffer)
{
    struct hview v;
    dpu_error_t e = check_handle(h, &v);
    if (e != DPU_OK)
        return e;
    wait_idle(v.set);
    for (uint32_t d = v.first; d < v.first + v.count; d++)
        v.set->dpus[d].xfer_buf = buffer;
    return DPU_OK;
}

struct push_job {
    struct updlrm_emu_set *set;
    const struct emu_sym_ref *r;
    dpu_xfer_t dir;
    uint32_t offset;
    size_t length;
    uint32_t first, count, stride, start;
    dpu_error_t result;
};

static void *push_worker(void *arg)
{
    struct push_job *j = (struct push_job *)arg;
    j->result = DPU_OK;
    for (uint32_t d = j->first + j->start; d < j->first + j->count; d += j->stride) {
        void *buf = j->set->dpus[d].xfer_buf;
        if (!buf)
            continue; /* DPUs without a prepared buffer take no part */
        if (j->dir == DPU_XFER_TO_DPU) {
            dpu_error_t e = dpu_write(j->set, d, j->r, j->offset, buf, j->length);
            if (e != DPU_OK)
                j->result = e;
        } else {
            dpu_read(j->set, d, j->r, j->offset, buf, j->length);
        }
    }
    return NULL;
}

static dpu_error_t push_xfer(struct dpu_set_t h, dpu_xfer_t xfer, const char *symbol_name,
                             const struct dpu_symbol_t *sym, uint32_t symbol_offset, size_t length,
                             dpu_xfer_flags_t flags)
{
    struct emu_sym_ref r;
    struct hview v;
    if (xfer != DPU_XFER_TO_DPU && xfer != DPU_XFER_FROM_DPU)
        return fail(DPU_ERR_INVALID_MEMORY_TRANSFER, "dpu_push_xfer: direction %d is neither TO_DPU nor FROM_DPU",
                    (int)xfer);
    dpu_error_t e = prepare_access(h, &v, symbol_name, sym, symbol_offset, length, &r);
    if (e != DPU_OK)
        return e;
    if (!symbol_name)
        symbol_name = "(symbol)";
    struct updlrm_emu_set *s = v.set;
    if (length) {
        /* Large pushes are copied by several threads (DPUs are independent). */
        uint32_t nthreads = 1;
        if ((uint64_t)length * v.count >= (8u << 20)) {
            long c = sysconf(_SC_NPROCESSORS_ONLN);
            nthreads = c > 1 ? (uint32_t)c : 1;
            if (nthreads > 64)
                nthreads = 64;
            if (nthreads > v.count)
                nthreads = v.count;
        }
        struct push_job jobs[64];
        pthread_t th[64];
        int started[64] = {0};
        for (uint32_t i = 0; i < nthreads; i++) {
            jobs[i] = (struct push_job){s, &r, xfer, symbol_offset, length, v.first, v.count, nthreads, i, DPU_OK};
            if (i > 0)
                started[i] = pthread_create(&th[i], NULL, push_worker, &jobs[i]) == 0;
        }
        for (uint32_t i = 1; i < nthreads; i++)
            if (!started[i])
                push_worker(&jobs[i]);
        push_worker(&jobs[0]);
        for (uint32_t i = 1; i < nthreads; i++)
            if (started[i])
                pthread_join(th[i], NULL);
        for (uint32_t i = 0; i < nthreads; i++)
            if (jobs[i].result != DPU_OK)
                e = fail(jobs[i].result, "dpu_push_xfer(%s): out of host memory for MRAM backing pages",
                         symbol_name);
    }
    if (!(flags & DPU_XFER_NO_RESET))
        for (uint32_t d = v.first; d < v.first + v.count; d++)
            s->dpus[d].xfer_buf = NULL;
    return e;
}

EMU_API dpu_error_t dpu_push_xfer(struct dpu_set_t h, dpu_xfer_t xfer, const char *symbol_name, uint32_t symbol_offset,
                                  size_t length, dpu_xfer_flags_t flags)
{
    if (!symbol_name)
        return fail(DPU_ERR_UNKNOWN_SYMBOL, "symbol name is NULL");
    return push_xfer(h, xfer, symbol_name, NULL, symbol_offset, length, flags);
}

EMU_API dpu_error_t dpu_push_xfer_symbol(struct dpu_set_t h, dpu_xfer_t xfer, struct dpu_symbol_t symbol,
                                         uint32_t symbol_offset, size_t length, dpu_xfer_flags_t flags)
{
    return push_xfer(h, xfer, NULL, &symbol, symbol_offset, length, flags);
}

/* Scatter/gather: DPU i of the set takes (TO_DPU) or gives (FROM_DPU) `length` bytes at the
 * symbol's offset from/to the host blocks get_block_info->f(&blk, i, 0, 1, ...) lists, in order.
 * The blocks' total must equal `length` unless DPU_SG_XFER_DISABLE_LENGTH_CHECK (then a short
 * TO_DPU transfer fills the rest with zeros). MRAM symbols only, as in the SDK. */
EMU_API dpu_error_t dpu_push_sg_xfer(struct dpu_set_t h, dpu_xfer_t xfer, const char *symbol_name,
                                     uint32_t symbol_offset, size_t length, get_block_t *get_block_info,
                                     dpu_sg_xfer_flags_t flags)
{
    struct emu_sym_ref r;
    struct hview v;
    if (xfer != DPU_XFER_TO_DPU && xfer != DPU_XFER_FROM_DPU)
        return fail(DPU_ERR_INVALID_MEMORY_TRANSFER, "dpu_push_sg_xfer: direction %d is neither TO_DPU nor FROM_DPU",
                    (int)xfer);
    if (!get_block_info || !get_block_info->f)
        return fail(DPU_ERR_INVALID_MEMORY_TRANSFER, "dpu_push_sg_xfer: get_block_info (and its f) is NULL");
    if (!symbol_name)
        return fail(DPU_ERR_UNKNOWN_SYMBOL, "symbol name is NULL");
    dpu_error_t e = prepare_access(h, &v, symbol_name, NULL, symbol_offset, length, &r);
    if (e != DPU_OK)
        return e;
    if (!r.is_mram)
        return fail(DPU_ERR_SG_NOT_MRAM_SYMBOL, "dpu_push_sg_xfer: symbol '%s' is not an MRAM symbol", symbol_name);
    for (uint32_t i = 0; i < v.count; i++) {
        uint32_t d = v.first + i;
        size_t done = 0;
        for (uint32_t b = 0;; b++) {
            struct sg_block_info blk = {NULL, 0};
            if (!get_block_info->f(&blk, i, b, get_block_info->args))
                break;
            if (done + blk.length > length)
                return fail(DPU_ERR_SG_LENGTH_MISMATCH,
                            "dpu_push_sg_xfer(%s): DPU %u's blocks exceed the transfer length %zu", symbol_name, i,
                            length);
            if (blk.length && !blk.addr)
                return fail(DPU_ERR_INVALID_MEMORY_TRANSFER, "dpu_push_sg_xfer: DPU %u block %u has a NULL address", i, b);
            if (xfer == DPU_XFER_TO_DPU) {
                if (emu_mram_write(&v.set->dpus[d], r.base + symbol_offset + (uint32_t)done, blk.addr, blk.length) != 0)
                    return fail(DPU_ERR_ALLOCATION, "dpu_push_sg_xfer: out of host memory for MRAM");
                v.set->dpus[d].counters.host_to_dpu_bytes += blk.length;
            } else {
                emu_mram_read(&v.set->dpus[d], r.base + symbol_offset + (uint32_t)done, blk.addr, blk.length);
                v.set->dpus[d].counters.dpu_to_host_bytes += blk.length;
            }
            done += blk.length;
        }
        if (done != length) {
            if (!(flags & DPU_SG_XFER_DISABLE_LENGTH_CHECK))
                return fail(DPU_ERR_SG_LENGTH_MISMATCH,
                            "dpu_push_sg_xfer(%s): DPU %u's blocks hold %zu bytes, the transfer is %zu", symbol_name, i,
                            done, length);
            if (xfer == DPU_XFER_TO_DPU) {
                static const uint8_t zeros[4096];
                for (size_t k = done; k < length;) {
                    size_t c = length - k < sizeof zeros ? length - k : sizeof zeros;
                    if (emu_mram_write(&v.set->dpus[d], r.base + symbol_offset + (uint32_t)k, zeros, c) != 0)
                        return fail(DPU_ERR_ALLOCATION, "dpu_push_sg_xfer: out of host memory for MRAM");
                    k += c;
                }
            }
        }
    }
    return DPU_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* Logs, counters, faults                                                                      */

EMU_API dpu_error_t dpu_log_read(struct dpu_set_t h, FILE *stream)
{
    struct hview v;
    dpu_error_t e = check_handle(h, &v);
    if (e != DPU_OK)
        return e;
    if (!stream)
        return fail(DPU_ERR_SYSTEM, "dpu_log_read: stream is NULL");
    wait_idle(v.set);
    for (uint32_t d = v.first; d < v.first + v.count; d++) {
        struct emu_dpu *dp = &v.set->dpus[d];
        if (v.count > 1)
            fprintf(stream, "=== DPU %u log ===\n", d);
        if (dp->log && dp->log_len)
            fwrite(dp->log, 1, dp->log_len, stream);
    }
    fflush(stream);
    return DPU_OK;
}

/* Log of one DPU as a string (not in the SDK): used by the Python runner. */
EMU_API const char *dpu_emu_log(struct dpu_set_t h, size_t *length)
{
    struct hview v;
    if (check_handle(h, &v) != DPU_OK || v.count != 1) {
        if (length)
            *length = 0;
        return "";
    }
    wait_idle(v.set);
    struct emu_dpu *dp = &v.set->dpus[v.first];
    if (length)
        *length = dp->log ? dp->log_len : 0;
    return dp->log ? dp->log : "";
}

EMU_API dpu_error_t dpu_emu_get_counters(struct dpu_set_t h, struct dpu_emu_counters *out)
{
    struct hview v;
    dpu_error_t e = check_handle(h, &v);
    if (e != DPU_OK)
        return e;
    if (!out)
        return fail(DPU_ERR_SYSTEM, "dpu_emu_get_counters: out is NULL");
    wait_idle(v.set);
    for (uint32_t i = 0; i < v.count; i++)
        out[i] = v.set->dpus[v.first + i].counters;
    return DPU_OK;
}

/* sizeof(struct dpu_emu_counters), so that bindings can check their copy of the layout. */
EMU_API size_t dpu_emu_counters_size(void) { return sizeof(struct dpu_emu_counters); }

EMU_API dpu_error_t dpu_emu_reset_transfer_counters(struct dpu_set_t h)
{
    struct hview v;
    dpu_error_t e = check_handle(h, &v);
    if (e != DPU_OK)
        return e;
    wait_idle(v.set);
    for (uint32_t d = v.first; d < v.first + v.count; d++) {
        v.set->dpus[d].counters.host_to_dpu_bytes = 0;
        v.set->dpus[d].counters.dpu_to_host_bytes = 0;
    }
    return DPU_OK;
}

EMU_API dpu_error_t dpu_emu_last_fault(struct dpu_set_t h, uint32_t *dpu, uint32_t *tasklet, char *msg, size_t len)
{
    struct hview v;
    dpu_error_t e = check_handle(h, &v);
    if (e != DPU_OK)
        return e;
    struct updlrm_emu_set *s = v.set;
    wait_idle(s);
    pthread_mutex_lock(&s->lock);
    int has = s->has_fault;
    if (dpu)
        *dpu = has ? s->fault_dpu : EMU_NO_TASKLET;
    if (tasklet)
        *tasklet = has ? s->fault_tasklet : EMU_NO_TASKLET;
    if (msg && len)
        snprintf(msg, len, "%s", has ? s->fault_msg : "");
    pthread_mutex_unlock(&s->lock);
    return has ? DPU_OK : DPU_ERR_INVALID_DPU_SET;
}

/* ------------------------------------------------------------------------------------------ */
/* dpu_log.h and dpu_probe.h                                                                   */

EMU_API dpu_error_t dpulog_read_for_dpu(struct dpu_t *dpu, FILE *stream)
{
    return dpu_log_read(dpu_set_from_dpu(dpu), stream);
}

EMU_API dpu_error_t dpu_probe_init(const char *name, struct dpu_probe_t *probe)
{
    if (!probe)
        return fail(DPU_ERR_INTERNAL, "dpu_probe_init: probe is NULL");
    probe->name = name;
    probe->running = 0;
    return DPU_OK;
}

EMU_API dpu_error_t dpu_probe_deinit(struct dpu_probe_t *probe)
{
    (void)probe;
    return DPU_OK;
}

EMU_API dpu_error_t dpu_probe_start(struct dpu_probe_t *probe)
{
    if (probe)
        probe->running = 1;
    return DPU_OK;
}

EMU_API dpu_error_t dpu_probe_stop(struct dpu_probe_t *probe)
{
    if (probe)
        probe->running = 0;
    return DPU_OK;
}

EMU_API dpu_error_t dpu_probe_get(struct dpu_probe_t *probe, dpu_probe_option_t option, dpu_probe_mode_t mode,
                                  double *value)
{
    (void)probe;
    (void)option;
    (void)mode;
    if (value)
        *value = 0.0;
    return fail(DPU_ERR_INTERNAL, "dpu_probe_get: the emulator measures no energy or DPU time (the timing model "
                                  "is separate); build without the energy probe");
}

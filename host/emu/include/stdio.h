/*
 * stdio.h - the DPU printf, emulator version. Kernels that include <stdio.h> with host/emu/include
 * first on the include path get this shim: printf/puts/putchar write into the DPU's log buffer,
 * which the host reads with dpu_log_read(). The rest of the host's stdio stays available.
 */
#ifndef UPDLRM_EMU_STDIO_SHIM_H
#define UPDLRM_EMU_STDIO_SHIM_H
#pragma GCC system_header /* #include_next is an extension: keep -pedantic kernels quiet */

#include_next <stdio.h>
#include <stdarg.h>
#include "attributes.h"

static inline int updlrm_emu_printf(const char *format, ...) __attribute__((format(printf, 1, 2)));
static inline int updlrm_emu_printf(const char *format, ...)
{
    va_list ap;
    va_start(ap, format);
    int n = __UPDLRM_RT->vprintf(format, ap);
    va_end(ap);
    return n;
}
static inline int updlrm_emu_puts(const char *s) { return updlrm_emu_printf("%s\n", s); }
static inline int updlrm_emu_putchar(int c) { updlrm_emu_printf("%c", c); return c; }

/* STDOUT_BUFFER_INIT(size): the SDK's printf buffer size for the program. The emulator keeps up to
 * 1 MiB of printf output per DPU and launch whatever the size; the macro only checks it. */
#define STDOUT_BUFFER_INIT(_size) \
    typedef char __updlrm_emu_stdout_buffer_size_check[((_size) > 0) ? 1 : -1] __attribute__((unused))

#undef printf
#undef puts
#undef putchar
#define printf updlrm_emu_printf
#define puts updlrm_emu_puts
#define putchar updlrm_emu_putchar

#endif

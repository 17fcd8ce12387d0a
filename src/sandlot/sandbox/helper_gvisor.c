/*
 * The init's part under gVisor (see helper.c's theory of operation): the seccomp program it
 * installs, the capability it keeps, and the loop that relays output, passes signals on and
 * reaps, for what runsc 2022 does not give the way a kernel and bwrap do.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

#include "helper.h"

#define MAX_FILTER_BYTES (BPF_MAXINSNS * sizeof(struct sock_filter))

/* Read the seccomp BPF program (what bwrap --seccomp loads in the jail) from path, then unlink
 * it: the child installs it just before exec. */
void read_filter(const char *path, struct sock_fprog *prog) {
    static struct sock_filter insns[BPF_MAXINSNS];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) die("cannot open", path);
    size_t len = 0;
    for (;;) {
        ssize_t n = read(fd, (char *)insns + len, MAX_FILTER_BYTES - len);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) die("cannot read", path);
        if (n == 0) break;
        len += (size_t)n;
        if (len == MAX_FILTER_BYTES) break;
    }
    close(fd);
    if (unlink(path) != 0) die("cannot unlink", path);
    if (len == 0 || len % sizeof(struct sock_filter) != 0) { errno = EINVAL; die("bad seccomp program", path); }
    prog->len = (unsigned short)(len / sizeof(struct sock_filter));
    prog->filter = insns;
}

/* Keep only CAP_KILL (the final kill(-1) and the signal channel reach the box uid's processes). */
void keep_only_cap_kill(void) {
    struct __user_cap_header_struct header = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct data[2];
    memset(data, 0, sizeof data);
    data[0].effective = data[0].permitted = 1u << CAP_KILL;
    if (syscall(SYS_capset, &header, data) != 0) die("capset", NULL);
}

/* The program's stdout and stderr pipes, owned by its uid (as the effective uid while they are made),
 * so that it can reopen them (`echo x > /dev/stderr`) as it could its host pipes. */
void relay_pipes(int out[2], int err[2], long uid, long gid) {
    if (uid > 0 && (setresgid(-1, gid, -1) != 0 || setresuid(-1, uid, -1) != 0)) die("seteuid", NULL);
    if (pipe2(out, O_CLOEXEC) != 0 || pipe2(err, O_CLOEXEC) != 0) die("pipe", NULL);
    /* Back to root (the saved uid): that also restores the effective capabilities. */
    if (uid > 0 && (setresuid(-1, 0, -1) != 0 || setresgid(-1, 0, -1) != 0)) die("seteuid back", NULL);
}

/* Write all of buf to fd, whatever short writes the other side makes. */
static int write_all(int fd, const char *buf, size_t len) {
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno == EAGAIN) {
            struct pollfd p = {fd, POLLOUT, 0};
            poll(&p, 1, -1);
            continue;
        }
        if (n <= 0) return -1;
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

/* One chunk from a relayed pipe to its host fd; returns -1 (and closes src) at EOF. A host side that is
 * gone (sandlot stopped reading: the run is being killed) drops the data rather than the init. */
static int relay_chunk(int src, int dst) {
    static char buf[64 * 1024];
    ssize_t n = read(src, buf, sizeof buf);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) return src;
    if (n <= 0) {
        close(src);
        return -1;
    }
    write_all(dst, buf, (size_t)n);
    return src;
}

/* Signal numbers sent by the host, one byte each, go to the program's process group. */
static int deliver_signals(int fd, pid_t child, int child_alive) {
    unsigned char sigs[64];
    ssize_t n = read(fd, sigs, sizeof sigs);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) return fd;
    if (n <= 0) {
        close(fd);
        return -1;
    }
    for (ssize_t k = 0; k < n && child_alive; k++) {
        if (sigs[k] < 1 || sigs[k] >= NSIG) continue;
        if (kill(-child, sigs[k]) != 0) kill(child, sigs[k]); /* it may have left its group */
    }
    return fd;
}

/* Under gVisor: relay output, pass signals on and reap, until every process is gone and
 * every relayed pipe is at EOF. SIGCHLD (blocked since before the fork) wakes the poll. */
void supervise(pid_t child, int sigchld_fd, int out, int err, int signal_fd, int *main_status,
                      int *have_main) {
    int all_reaped = 0;
    while (!all_reaped || out >= 0 || err >= 0) {
        if (!all_reaped) all_reaped = reap(child, main_status, have_main, 0);
        struct pollfd p[4] = {
            {all_reaped ? -1 : sigchld_fd, POLLIN, 0}, {out, POLLIN, 0}, {err, POLLIN, 0},
            {*have_main ? -1 : signal_fd, POLLIN, 0},
        };
        if (all_reaped && out < 0 && err < 0) break;
        if (poll(p, 4, -1) < 0) {
            if (errno == EINTR) continue;
            die("poll", NULL);
        }
        if (p[0].revents) {
            struct signalfd_siginfo info;
            while (read(sigchld_fd, &info, sizeof info) > 0) {}
        }
        if (p[1].revents) out = relay_chunk(out, 1);
        if (p[2].revents) err = relay_chunk(err, 2);
        if (p[3].revents) signal_fd = deliver_signals(signal_fd, child, !*have_main);
    }
}

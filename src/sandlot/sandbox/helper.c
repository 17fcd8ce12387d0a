/*
 * sandlot-helper: the two privileged-boundary steps that Python cannot do
 * without a window of exposure. Built once (static) by sandlot/sandbox/helper.py.
 *
 * Theory of operation
 *
 *   sandlot (root, host)
 *     `- sandlot-helper launch   (root)  joins the box's cgroups, drops to the
 *          |                              box uid, then execs bwrap; so every
 *          |                              process of the run is accounted from
 *          |                              its first instruction.
 *          `- bwrap              (box uid) builds the namespaces and mounts,
 *               |                          loads seccomp, execs:
 *               `- sandlot-helper init  (pid 1 of the box) forks the program,
 *                    |                   reports "S" (setup complete) and the
 *                    |                   program's exact wait status over a
 *                    |                   private pipe, kills every survivor.
 *                    `- the program
 *
 * The status lines and the command message are specified once, in
 * sandbox/protocol.py (their letters are helper.h's STATUS_* names). Inside the
 * box the init's reap() ends whatever the program started; everything outside
 * its reach (the init itself, bwrap, runsc, the cgroup) is ended by the host's
 * one owner of killing a box, sandbox/reaper.py.
 *
 * Under gVisor (runsc passes nothing but stdio into the container) the same
 * init takes --status-path/--command-path instead: host FIFOs bind-mounted into
 * the sandbox, opened here, after which everything is as above, plus what the
 * jail gets from the kernel or bwrap and gVisor (runsc 2022) does not give:
 *   --uid/--gid      the init runs as root inside gVisor, keeping only CAP_KILL,
 *                    and the program as the box uid: gVisor delivers even SIGKILL
 *                    from a program to its pid 1, a kernel never does.
 *   --seccomp-path   the jail's own BPF program, installed in the child.
 *   --signal-path    a FIFO of signal numbers for the program's process group
 *                    (an interactive door's Ctrl-C), instead of a `runsc kill`.
 *   --relay-output   the program writes into pipes of gVisor's own, which block
 *                    until a write is whole; the init copies them out. gVisor's
 *                    writes to a host pipe return short (65536 of 1 MiB) and
 *                    most runtimes do not retry.
 *
 * Errors of the helper itself are reported on stderr prefixed with
 * "sandlot-helper:" and exit code 125; sandlot tells them apart from the
 * program's own failures because the init never wrote "S".
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "helper.h"

extern char **environ;

#define MAX_ITEMS 16

void die(const char *what, const char *arg) {
    int saved = errno;
    fprintf(stderr, "sandlot-helper: %s%s%s: %s\n", what, arg ? " " : "", arg ? arg : "",
            saved ? strerror(saved) : "invalid usage");
    _exit(HELPER_FAILURE);
}

static long parse_long(const char *s, const char *what) {
    char *end = NULL;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || !end || *end != '\0' || v < 0) {
        errno = EINVAL;
        die(what, s);
    }
    return v;
}

/* Restore default dispositions and an empty mask: the parent (Python) ignores
 * SIGPIPE, and ignored signals survive exec. */
static void reset_signals(void) {
    sigset_t none;
    for (int sig = 1; sig < NSIG; sig++) {
        if (sig != SIGKILL && sig != SIGSTOP) signal(sig, SIG_DFL);
    }
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
}

/* Close every fd from 3 up except those in keep (ascending; -1 entries are skipped). */
static void close_other_fds(const int *keep, int nkeep) {
    int first = 3;
    for (int k = 0; k < nkeep; k++) {
        if (keep[k] < first) continue;
        if (keep[k] > first && syscall(SYS_close_range, first, keep[k] - 1, 0) != 0)
            for (int fd = first; fd < keep[k]; fd++) close(fd);
        first = keep[k] + 1;
    }
    /* gVisor (runsc 2022) answers EINVAL to ~0U but takes INT_MAX, which covers every fd; the
       loop is the last resort (4096 closes cost ~40 ms of CPU under gVisor's ptrace platform). */
    if (syscall(SYS_close_range, first, ~0U, 0) != 0 && syscall(SYS_close_range, first, INT_MAX, 0) != 0)
        for (int fd = first; fd < 4096; fd++) close(fd);
}

struct rl { int resource; rlim_t value; };

#define MAX_RLIMITS 40 /* every resource (16) twice: the box's baseline, then the run's own */

/* NAME=VALUE, VALUE a count or -1 for unlimited. */
static int parse_rlimit(const char *spec, struct rl *out) {
    static const struct { const char *name; int resource; } names[] = {
        {"fsize", RLIMIT_FSIZE}, {"core", RLIMIT_CORE}, {"nofile", RLIMIT_NOFILE},
        {"stack", RLIMIT_STACK}, {"cpu", RLIMIT_CPU}, {"memlock", RLIMIT_MEMLOCK},
        {"msgqueue", RLIMIT_MSGQUEUE}, {"nproc", RLIMIT_NPROC}, {"as", RLIMIT_AS},
        {"data", RLIMIT_DATA}, {"rss", RLIMIT_RSS}, {"locks", RLIMIT_LOCKS},
        {"sigpending", RLIMIT_SIGPENDING}, {"nice", RLIMIT_NICE}, {"rtprio", RLIMIT_RTPRIO},
        {"rttime", RLIMIT_RTTIME},
    };
    const char *eq = strchr(spec, '=');
    if (!eq) return -1;
    for (size_t n = 0; n < sizeof names / sizeof names[0]; n++) {
        if (strlen(names[n].name) == (size_t)(eq - spec) && !strncmp(spec, names[n].name, eq - spec)) {
            out->resource = names[n].resource;
            out->value = !strcmp(eq + 1, "-1") ? RLIM_INFINITY : (rlim_t)parse_long(eq + 1, "bad rlimit");
            return 0;
        }
    }
    return -1;
}

/* Soft and hard alike (the CPU hard limit one second later, so SIGXCPU comes before SIGKILL).
 * Raising a hard limit needs CAP_SYS_RESOURCE, which sandlot itself may lack (a container):
 * then the lower hard limit we run under stays, stricter than asked and never looser.
 * Returns 0, or -1 with errno set. */
static int apply_rlimits(const struct rl *limits, int n) {
    for (int r = 0; r < n; r++) {
        struct rlimit lim = {limits[r].value, limits[r].value}, held;
        if (limits[r].resource == RLIMIT_CPU && limits[r].value != RLIM_INFINITY) lim.rlim_max = limits[r].value + 1;
        if (setrlimit(limits[r].resource, &lim) == 0) continue;
        if (errno != EPERM || getrlimit(limits[r].resource, &held) != 0) return -1;
        if (lim.rlim_max > held.rlim_max) lim.rlim_max = held.rlim_max;
        if (lim.rlim_cur > lim.rlim_max) lim.rlim_cur = lim.rlim_max;
        if (setrlimit(limits[r].resource, &lim) != 0) return -1;
    }
    return 0;
}

/* launch --uid U --gid G | --keep-root [--cgroup PROCS_FILE]... [--rlimit NAME=VALUE]... -- PROGRAM ARGS...
 * The rlimits are the box's baseline: set here, as root, because raising a hard
 * limit the service itself runs under needs CAP_SYS_RESOURCE, which the box never has. */
static int do_launch(int argc, char **argv) {
    long uid = -1, gid = -1;
    int keep_root = 0;
    const char *cgroups[MAX_ITEMS];
    struct rl limits[MAX_RLIMITS];
    int ncg = 0, nrl = 0, i = 2;
    for (; i < argc && strcmp(argv[i], "--") != 0; i += 2) {
        if (i + 1 >= argc) die("missing value for", argv[i]);
        if (!strcmp(argv[i], "--uid")) uid = parse_long(argv[i + 1], "bad uid");
        else if (!strcmp(argv[i], "--gid")) gid = parse_long(argv[i + 1], "bad gid");
        else if (!strcmp(argv[i], "--cgroup") && ncg < MAX_ITEMS) cgroups[ncg++] = argv[i + 1];
        else if (!strcmp(argv[i], "--rlimit") && nrl < MAX_RLIMITS) {
            if (parse_rlimit(argv[i + 1], &limits[nrl++]) != 0) { errno = EINVAL; die("bad rlimit", argv[i + 1]); }
        }
        else if (!strcmp(argv[i], "--keep-root")) { keep_root = 1; i--; }
        else { errno = EINVAL; die("unknown option", argv[i]); }
    }
    if (i + 1 >= argc || (!keep_root && (uid <= 0 || gid <= 0)) || (keep_root && (uid >= 0 || gid >= 0))) {
        errno = EINVAL;
        die("usage: launch --uid U --gid G | --keep-root [--cgroup F]... -- PROGRAM", NULL);
    }

    char pid[32];
    int len = snprintf(pid, sizeof pid, "%d", getpid());
    for (int c = 0; c < ncg; c++) {
        int fd = open(cgroups[c], O_WRONLY | O_CLOEXEC);
        if (fd < 0) die("cannot open cgroup", cgroups[c]);
        if (write(fd, pid, len) != len) die("cannot join cgroup", cgroups[c]);
        close(fd);
    }
    if (apply_rlimits(limits, nrl) != 0) die("setrlimit", NULL);
    reset_signals();
    /* --keep-root is for runsc, which must start as root and drops privileges itself. */
    if (!keep_root && setgroups(0, NULL) != 0) die("setgroups", NULL);
    if (!keep_root && setresgid(gid, gid, gid) != 0) die("setresgid", argv[i + 1]);
    if (!keep_root && setresuid(uid, uid, uid) != 0) die("setresuid", argv[i + 1]);
    /* After the uid change (which clears it): die with sandlot. */
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) die("prctl(PDEATHSIG)", NULL);
    if (getppid() == 1) { errno = ESRCH; die("parent died before launch", NULL); }
    execv(argv[i + 1], &argv[i + 1]);
    die("cannot execute", argv[i + 1]);
    return HELPER_FAILURE;
}

static void report(int fd, const char *line) {
    size_t len = strlen(line);
    while (len > 0) {
        ssize_t n = write(fd, line, len);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return;
        line += n;
        len -= (size_t)n;
    }
}

#define MAX_COMMAND_BYTES (1 << 20)
#define MAX_COMMAND_ITEMS 4096

/* The command message sent by the host to a pre-launched box (specified in sandbox/protocol.py):
 * NUL-terminated strings, <argc> argv... <envc> env... [<nrl> NAME=VALUE...], read until EOF.
 * Returns 0, or -1 with errno set. */
static int read_command(int fd, char ***argv_out, char ***env_out, struct rl *limits, int max_rl, int *nrl) {
    static char buf[MAX_COMMAND_BYTES];
    static char *items[MAX_COMMAND_ITEMS];
    static char *argv_copy[MAX_COMMAND_ITEMS + 1], *env_copy[MAX_COMMAND_ITEMS + 1];
    size_t len = 0, count = 0, at = 0;
    for (;;) {
        ssize_t n = read(fd, buf + len, sizeof buf - len);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return -1;
        if (n == 0) break;
        len += (size_t)n;
        if (len == sizeof buf) { errno = E2BIG; return -1; }
    }
    if (len == 0 || buf[len - 1] != '\0') { errno = EINVAL; return -1; }
    for (size_t off = 0; off < len; off += strlen(buf + off) + 1) {
        if (count == MAX_COMMAND_ITEMS) { errno = E2BIG; return -1; }
        items[count++] = buf + off;
    }
    char **groups[2] = {argv_copy, env_copy};
    for (int g = 0; g < 2; g++) {
        char *end = NULL;
        long k = at < count ? strtol(items[at], &end, 10) : -1;
        if (k < 0 || *end != '\0' || (size_t)k > count - at - 1 || (g == 0 && k == 0)) { errno = EINVAL; return -1; }
        at++;
        for (long j = 0; j < k; j++) groups[g][j] = items[at++];
        groups[g][k] = NULL;
    }
    *nrl = 0;
    if (at < count) {
        char *end = NULL;
        long k = strtol(items[at], &end, 10);
        if (k < 0 || *end != '\0' || k > max_rl || (size_t)k > count - at - 1) { errno = EINVAL; return -1; }
        at++;
        for (long j = 0; j < k; j++)
            if (parse_rlimit(items[at++], &limits[j]) != 0) { errno = EINVAL; return -1; }
        *nrl = (int)k;
    }
    if (at != count) { errno = EINVAL; return -1; }
    *argv_out = argv_copy;
    *env_out = env_copy;
    return 0;
}

/* Open a channel given by path (a host FIFO) at a fixed fd number, then unlink
 * the name so that no program of the box can open it again. The FIFO is opened
 * without blocking (the host already holds both of its ends), then made
 * blocking, so reading the command ends at the host's close. */
static int open_channel(const char *path, int flags, int at) {
    int fd = open(path, flags | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) die("cannot open", path);
    if (unlink(path) != 0) die("cannot unlink", path);
    if (fcntl(fd, F_SETFL, flags & O_ACCMODE) != 0) die("fcntl", path);
    if (fd != at) {
        if (dup2(fd, at) < 0) die("dup2", path);
        close(fd);
    }
    return at;
}

/* Reap every child; when the program is done, kill everything it started. Returns 1 once none is left.
 * The box's own half of ending a run; the host's half is sandbox/reaper.py. */
int reap(pid_t child, int *main_status, int *have_main, int block) {
    for (;;) {
        int st;
        pid_t got = waitpid(-1, &st, __WALL | (block ? 0 : WNOHANG));
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) return 1; /* ECHILD: everyone is reaped */
        if (got == 0) return 0;
        if (got == child) {
            *main_status = st;
            *have_main = 1;
            /* The program is done: nothing it started may outlive it. */
            kill(-1, SIGKILL);
        }
    }
}

/* init --status-fd N|--status-path P [--command-fd M|--command-path P] [--rlimit NAME=VALUE]...
 *      [--uid U --gid G] [--seccomp-path P] [--signal-path P] [--relay-output] [-- PROGRAM ARGS...]
 * (pid 1 in the box). Its status lines and the command message are specified in sandbox/protocol.py.
 * With a command channel the box was launched ahead of time: init reports STATUS_READY and waits for
 * the command, its environment and its rlimits on it. */
static int do_init(int argc, char **argv) {
    int status_fd = -1, command_fd = -1, signal_fd = -1, relay = 0, nrl = 0, i = 2;
    long uid = -1, gid = -1;
    const char *status_path = NULL, *command_path = NULL, *seccomp_path = NULL, *signal_path = NULL;
    struct rl limits[MAX_RLIMITS];
    for (; i < argc && strcmp(argv[i], "--") != 0; i += 2) {
        if (!strcmp(argv[i], "--relay-output")) { relay = 1; i--; continue; }
        if (i + 1 >= argc) die("missing value for", argv[i]);
        if (!strcmp(argv[i], "--status-fd")) status_fd = (int)parse_long(argv[i + 1], "bad fd");
        else if (!strcmp(argv[i], "--command-fd")) command_fd = (int)parse_long(argv[i + 1], "bad fd");
        else if (!strcmp(argv[i], "--status-path")) status_path = argv[i + 1];
        else if (!strcmp(argv[i], "--command-path")) command_path = argv[i + 1];
        else if (!strcmp(argv[i], "--seccomp-path")) seccomp_path = argv[i + 1];
        else if (!strcmp(argv[i], "--signal-path")) signal_path = argv[i + 1];
        else if (!strcmp(argv[i], "--uid")) uid = parse_long(argv[i + 1], "bad uid");
        else if (!strcmp(argv[i], "--gid")) gid = parse_long(argv[i + 1], "bad gid");
        else if (!strcmp(argv[i], "--rlimit") && nrl < MAX_RLIMITS) {
            if (parse_rlimit(argv[i + 1], &limits[nrl++]) != 0) { errno = EINVAL; die("bad rlimit", argv[i + 1]); }
        } else { errno = EINVAL; die("unknown option", argv[i]); }
    }
    /* kill(-1) below must only ever reach the box's own pid namespace. */
    if (getpid() != 1) { errno = EPERM; die("init must be pid 1 of a fresh pid namespace", NULL); }
    if ((uid < 0) != (gid < 0) || uid == 0 || gid == 0) { errno = EINVAL; die("--uid and --gid: both, not root", NULL); }
    if (status_path != NULL) status_fd = open_channel(status_path, O_WRONLY, 4);
    if (command_path != NULL) command_fd = open_channel(command_path, O_RDONLY, 5);
    if (signal_path != NULL) signal_fd = open_channel(signal_path, O_RDONLY, 6);
    if (status_fd < 3 || (command_fd < 0 && i + 1 >= argc)) {
        errno = EINVAL;
        die("usage: init --status-fd N|--status-path P [--command-fd M|--command-path P] [-- PROGRAM]", NULL);
    }
    char **program = i + 1 < argc ? &argv[i + 1] : NULL;
    char **program_env = NULL;
    struct sock_fprog filter = {0, NULL};
    if (seccomp_path != NULL) read_filter(seccomp_path, &filter);

    /* Nothing but stdio and the channels survives; none reaches the program (close-on-exec),
     * and a non-dumpable init cannot be inspected through /proc by the program. */
    int keep[3] = {status_fd, command_fd, signal_fd}; /* 4, 5, 6 or -1 */
    for (int a = 0; a < 3; a++)
        for (int b = a + 1; b < 3; b++)
            if (keep[b] < keep[a]) { int t = keep[a]; keep[a] = keep[b]; keep[b] = t; }
    close_other_fds(keep, 3);
    if (fcntl(status_fd, F_SETFD, FD_CLOEXEC) != 0) die("status fd", NULL);
    if (signal_fd >= 0) fcntl(signal_fd, F_SETFD, FD_CLOEXEC);
    prctl(PR_SET_DUMPABLE, 0);
    reset_signals();
    if (command_fd >= 0) {
        fcntl(command_fd, F_SETFD, FD_CLOEXEC);
        report(status_fd, STATUS_READY "\n");
        int more = 0;
        if (read_command(command_fd, &program, &program_env, &limits[nrl], MAX_RLIMITS - nrl, &more) != 0) {
            char line[64];
            snprintf(line, sizeof line, STATUS_EXEC_ERROR " %d command\n", errno);
            report(status_fd, line);
            return 0;
        }
        nrl += more;
        close(command_fd);
        /* Launched ahead of time, this init's cwd is the workdir as it was then; the host may have
         * bound a session's workdir over it since (the mount propagated in). Resolve the path again. */
        char cwd[4096];
        if (getcwd(cwd, sizeof cwd) != NULL && chdir(cwd) != 0) die("chdir", cwd);
    }

    int supervised = relay || signal_fd >= 0;
    int out_pipe[2] = {-1, -1}, err_pipe[2] = {-1, -1}, sigchld_fd = -1;
    if (relay) relay_pipes(out_pipe, err_pipe, uid, gid);
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    if (supervised) { /* blocked before the fork, so no exit goes unseen */
        sigprocmask(SIG_BLOCK, &chld, NULL);
        sigchld_fd = signalfd(-1, &chld, SFD_NONBLOCK | SFD_CLOEXEC);
        if (sigchld_fd < 0) die("signalfd", NULL);
    }

    pid_t child = fork();
    if (child < 0) die("fork", NULL);
    if (child == 0) {
        const char *step = "dup2";
        sigprocmask(SIG_UNBLOCK, &chld, NULL);
        if (relay && (dup2(out_pipe[1], 1) < 0 || dup2(err_pipe[1], 2) < 0)) goto fail;
        if (signal_fd >= 0) setpgid(0, 0); /* its own group: the one signals go to */
        step = "rlimit";
        if (apply_rlimits(limits, nrl) != 0) goto fail;
        step = "setuid";
        if (uid > 0) {
            /* The bounding set goes first (that takes CAP_SETPCAP); the uid change then clears the rest. */
            for (int cap = 0; cap <= CAP_LAST_CAP; cap++)
                if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 && errno != EINVAL) goto fail;
            if (setgroups(0, NULL) != 0 || setresgid(gid, gid, gid) != 0 || setresuid(uid, uid, uid) != 0) goto fail;
        }
        step = "seccomp";
        if (filter.filter != NULL && (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 ||
                                      prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &filter) != 0))
            goto fail;
        if (program_env != NULL) environ = program_env;
        execvp(program[0], program);
        step = "exec";
    fail:;
        char line[64];
        snprintf(line, sizeof line, STATUS_EXEC_ERROR " %d %s\n", errno, step);
        report(status_fd, line);
        _exit(127);
    }
    if (uid > 0) keep_only_cap_kill();
    report(status_fd, STATUS_STARTED "\n");

    int main_status = 0, have_main = 0;
    if (supervised) {
        /* A host end closed early (the run is being torn down) must not kill the init before its report. */
        signal(SIGPIPE, SIG_IGN);
        if (relay) {
            close(out_pipe[1]);
            close(err_pipe[1]);
        }
        supervise(child, sigchld_fd, out_pipe[0], err_pipe[0], signal_fd, &main_status, &have_main);
    } else {
        reap(child, &main_status, &have_main, 1);
    }
    char line[64];
    snprintf(line, sizeof line, STATUS_EXITED " %d %d\n", have_main, main_status);
    report(status_fd, line);
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 2 && !strcmp(argv[1], "launch")) return do_launch(argc, argv);
    if (argc >= 2 && !strcmp(argv[1], "init")) return do_init(argc, argv);
    fprintf(stderr, "usage: sandlot-helper launch|init ...\n");
    return HELPER_FAILURE;
}

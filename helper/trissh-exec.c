/*
 * trissh-exec: the parent of every session's program inside a container.
 *
 * podman reports an exec that died of signal N as exit code 128+N, which a program may
 * also return on purpose; only the program's parent can tell the two apart. This helper
 * is that parent. It runs
 *
 *     trissh-exec --status FILE -- PROGRAM [ARG...]
 *
 * forks PROGRAM, and exits with its exit code; when PROGRAM dies of a signal it first
 * writes "signal N core C\n" to FILE (normally on a tmpfs) and exits 128+N. trissh reads
 * FILE only when the code is ambiguous (129..192):
 *
 *     trissh-exec --read-status FILE      prints the record (if any) and removes it
 *
 * Signals sent to the helper by another process (trissh's "signal" requests) are passed
 * on to PROGRAM; signals the terminal generates reach PROGRAM's process group directly,
 * so the helper ignores those rather than deliver them twice. If the helper itself is
 * killed, PR_SET_PDEATHSIG kills PROGRAM too: nothing outlives its session.
 *
 * Static, no allocation, a few hundred bytes of logic; builds with `cc -static -O2`.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile sig_atomic_t child_pid = 0;

static const int forwarded[] = {SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2,
                                SIGALRM, SIGCONT, SIGTSTP, SIGWINCH, SIGPIPE};

static void forward(int sig, siginfo_t *info, void *context) {
    (void)context;
    /* Terminal-generated signals (SI_KERNEL) already went to the program's group. */
    if (info->si_code != SI_USER && info->si_code != SI_QUEUE) return;
    if (child_pid > 0 && info->si_pid != child_pid) kill(child_pid, sig);
}

static int usage(void) {
    static const char text[] =
        "usage: trissh-exec --status FILE -- PROGRAM [ARG...]\n"
        "       trissh-exec --read-status FILE\n";
    if (write(2, text, sizeof text - 1) < 0) return 2;
    return 2;
}

static int read_status(const char *path) {
    char buf[64];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return errno == ENOENT ? 0 : 1;
    ssize_t n = read(fd, buf, sizeof buf);
    close(fd);
    unlink(path);
    if (n > 0 && write(1, buf, (size_t)n) != n) return 1;
    return 0;
}

static void write_status(const char *path, int sig, int core) {
    char buf[64];
    int len = snprintf(buf, sizeof buf, "signal %d core %d\n", sig, core);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) return;
    if (write(fd, buf, (size_t)len) != len) { /* nothing better to do */ }
    close(fd);
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "--read-status") == 0) return read_status(argv[2]);
    if (argc < 5 || strcmp(argv[1], "--status") != 0 || strcmp(argv[3], "--") != 0)
        return usage();
    const char *status_path = argv[2];
    char **program = &argv[4];

    sigset_t all, old;
    sigfillset(&all);
    sigprocmask(SIG_BLOCK, &all, &old); /* no handler runs before child_pid is known */
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        perror("trissh-exec: fork");
        return 126;
    }
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) _exit(137); /* the helper is already gone */
        sigprocmask(SIG_SETMASK, &old, NULL);
        execvp(program[0], program);
        int code = errno == ENOENT ? 127 : 126;
        dprintf(2, "%s: %s\n", program[0], strerror(errno));
        _exit(code);
    }
    child_pid = pid;
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_sigaction = forward;
    action.sa_flags = SA_SIGINFO | SA_RESTART;
    sigfillset(&action.sa_mask);
    for (size_t i = 0; i < sizeof forwarded / sizeof forwarded[0]; i++)
        sigaction(forwarded[i], &action, NULL);
    sigprocmask(SIG_SETMASK, &old, NULL);

    int status;
    for (;;) {
        pid_t done = waitpid(pid, &status, 0);
        if (done == pid) break;
        if (done < 0 && errno != EINTR) {
            perror("trissh-exec: waitpid");
            return 126;
        }
    }
    if (WIFSIGNALED(status)) {
        write_status(status_path, WTERMSIG(status), WCOREDUMP(status) ? 1 : 0);
        return 128 + WTERMSIG(status);
    }
    return WEXITSTATUS(status);
}

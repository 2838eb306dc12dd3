/*
 * trissh-exec: the parent of every session's program inside a container.
 *
 * podman reports an exec that died of signal N as exit code 128+N, which a program may
 * also return on purpose; only the program's parent can tell the two apart. This helper
 * is that parent. It runs
 *
 *     trissh-exec --status FILE [--stdio SOCKET TOKEN] -- PROGRAM [ARG...]
 *
 * forks PROGRAM, and exits with its exit code; when PROGRAM dies of a signal it first
 * writes "signal N core C\n" to FILE (normally on a tmpfs) and exits 128+N. trissh reads
 * FILE only when the code is ambiguous (129..192):
 *
 *     trissh-exec --read-status FILE      prints the record (if any) and removes it
 *
 * With --stdio, PROGRAM's stdin, stdout and stderr are not the helper's (podman's exec
 * stream, which copies every byte through conmon and the API service) but three pipes
 * trissh made: the helper connects to the unix socket SOCKET (bind-mounted from trissh's
 * host), sends TOKEN (which proves it is the exec trissh started), receives the three
 * pipe ends by SCM_RIGHTS and gives them to PROGRAM as fds 0, 1 and 2. The helper's own
 * stdio stays podman's, so its error messages still reach the user, and its exit still
 * ends the exec. Every wait is bounded (HANDOVER_TIMEOUT); no handover, no PROGRAM.
 * The connection stays open (close-on-exec, PROGRAM never has it) and, when PROGRAM has
 * ended, carries one line back: "exit N" or "signal N core C". trissh learns the status
 * the moment it is known instead of polling podman, which records it tens of ms later.
 *
 * Signals sent to the helper by another process (trissh's "signal" requests) are passed
 * on to PROGRAM; signals the terminal generates reach PROGRAM's process group directly,
 * so the helper ignores those rather than deliver them twice. If the helper itself is
 * killed, PR_SET_PDEATHSIG kills PROGRAM too: nothing outlives its session.
 *
 * Agent mode: as a container's main process,
 *
 *     trissh-exec --agent SOCKET TOKEN
 *
 * connects to trissh's SOCK_SEQPACKET socket SOCKET, sends TOKEN, and then starts programs
 * on request, so a session needs no `podman exec` (tens of ms of runc and conmon each).
 * Each request is one message: "spawn\0" ARG... "\0" ENV... (NUL-terminated strings, an
 * empty one between argv and the extra environment) with four descriptors: the program's
 * stdin, stdout and stderr, and a stream socket of its own. The program runs in a new
 * session with those three as fds 0..2 and the agent's environment plus ENV (less the
 * HOSTNAME podman gives only a main process, so both ways of starting agree); on its socket
 * trissh may send "kill N\n", and the agent answers with the status line once the program
 * has ended ("exit N" / "signal N core C"); the signal goes to the program's process
 * group, as sshd's killpg. trissh closing a program's socket kills it.
 * "spawnpty\0" ROWS "\0" COLS "\0" ARG... "\0" ENV... with only the program's socket asks
 * for a terminal instead of pipes: the agent opens a pty in the container (ROWS x COLS),
 * makes its slave the program's controlling terminal and fds 0..2, and sends the master
 * back on the program's socket (one byte "p" with SCM_RIGHTS) before any status line; if
 * it cannot, it sends "error: ..." and closes the socket.
 * Socket requests ("connect", "listen", ... with one descriptor, the request's own line)
 * make sockets inside the container for forwarding: see agent-sockets.c; each is served by
 * a child of its own (at most AGENT_SOCKET_CHILDREN at once), since a name to resolve or a
 * connect to wait for would stall every session the agent serves.
 * When trissh closes the agent's socket (or cannot be reached at start), the agent kills
 * what it started and stays, doing nothing, as the container's keepalive: `podman exec`
 * still works. The agent acts on trissh's messages only; a program in the container may
 * kill the agent (its own user), which ends the container, as killing the keepalive would.
 *
 * Static, no allocation, a few hundred bytes of logic; scripts/setup-host.sh builds it with
 * `musl-gcc -static -O2 trissh-exec.c agent-sockets.c` (musl resolves names without the
 * NSS modules a static glibc would need from the image).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <poll.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include "agent-sockets.h"

static volatile sig_atomic_t child_pid = 0;

/* Seconds the helper waits for trissh at each step of the stdio handover. */
#define HANDOVER_TIMEOUT 30

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
        "usage: trissh-exec --status FILE [--stdio SOCKET TOKEN] -- PROGRAM [ARG...]\n"
        "       trissh-exec --read-status FILE\n"
        "       trissh-exec --agent SOCKET TOKEN\n";
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

/* How PROGRAM ended, as one line: "exit N" or "signal N core C". Returns its length. */
static int status_line(char *buf, size_t size, int status) {
    return WIFSIGNALED(status)
        ? snprintf(buf, size, "signal %d core %d\n", WTERMSIG(status), WCOREDUMP(status) ? 1 : 0)
        : snprintf(buf, size, "exit %d\n", WEXITSTATUS(status));
}

static void write_status(const char *path, int status) {
    char buf[64];
    int len = status_line(buf, sizeof buf, status);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) return;
    if (write(fd, buf, (size_t)len) != len) { /* nothing better to do */ }
    close(fd);
}

/* Connect to trissh's unix socket of `type` and prove who we are with `token`.
 * Returns the connection (its sends and receives bounded), or -1 with errno set. */
static int connect_with_token(const char *path, const char *token, int type) {
    struct sockaddr_un addr;
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    if (strlen(path) >= sizeof addr.sun_path) {
        errno = ENAMETOOLONG;
        return -1;
    }
    memcpy(addr.sun_path, path, strlen(path));
    int sock = socket(AF_UNIX, type | SOCK_CLOEXEC, 0);
    if (sock < 0) return -1;
    struct timeval limit = {.tv_sec = HANDOVER_TIMEOUT, .tv_usec = 0};
    setsockopt(sock, SOL_SOCKET, SO_RCVTIMEO, &limit, sizeof limit);
    setsockopt(sock, SOL_SOCKET, SO_SNDTIMEO, &limit, sizeof limit);
    size_t length = strlen(token);
    if (connect(sock, (struct sockaddr *)&addr, sizeof addr) < 0 ||
        send(sock, token, length, MSG_NOSIGNAL) != (ssize_t)length) {
        int saved = errno;
        close(sock);
        errno = saved;
        return -1;
    }
    return sock;
}

/* Connect to trissh's socket, prove who we are, receive PROGRAM's three stdio ends.
 * Returns the connection (kept for the status line), or -1 with errno set. */
static int receive_stdio(const char *path, const char *token, int fds[3]) {
    int sock = connect_with_token(path, token, SOCK_STREAM);
    if (sock < 0) return -1;
    char byte;
    struct iovec part = {.iov_base = &byte, .iov_len = 1};
    union {
        struct cmsghdr header;
        char space[CMSG_SPACE(3 * sizeof(int))];
    } control;
    memset(&control, 0, sizeof control);
    struct msghdr message = {.msg_iov = &part, .msg_iovlen = 1,
                             .msg_control = control.space,
                             .msg_controllen = sizeof control.space};
    ssize_t n;
    do n = recvmsg(sock, &message, MSG_CMSG_CLOEXEC);
    while (n < 0 && errno == EINTR);
    int saved = errno;
    struct cmsghdr *header = n == 1 ? CMSG_FIRSTHDR(&message) : NULL;
    if (header == NULL || header->cmsg_level != SOL_SOCKET || header->cmsg_type != SCM_RIGHTS ||
        header->cmsg_len != CMSG_LEN(3 * sizeof(int)) || (message.msg_flags & MSG_CTRUNC)) {
        if (header != NULL && header->cmsg_type == SCM_RIGHTS) { /* close what did arrive */
            int *got = (int *)CMSG_DATA(header);
            for (size_t i = 0; i < (header->cmsg_len - CMSG_LEN(0)) / sizeof(int); i++)
                close(got[i]);
        }
        close(sock);
        errno = n < 0 ? saved : EPROTO;
        return -1;
    }
    memcpy(fds, CMSG_DATA(header), 3 * sizeof(int));
    for (int i = 0; i < 3; i++) {
        if (fds[i] <= 2) { /* 0..2 are podman's stream: a new fd there means they were closed */
            for (int j = 0; j < 3; j++) close(fds[j]);
            close(sock);
            errno = EBADF;
            return -1;
        }
    }
    return sock;
}

/* Tell trissh how PROGRAM ended; if it is gone, podman's record still says. */
static void report_status(int sock, int status) {
    char line[64];
    int length = status_line(line, sizeof line, status);
    if (send(sock, line, (size_t)length, MSG_NOSIGNAL) != length) { /* trissh went away */ }
    close(sock);
}

/* ---------------------------------------------------------------------- agent mode */

#define AGENT_MESSAGE (400 * 1024) /* the largest request; trissh refuses to send more */
#define AGENT_PROGRAMS 1024 /* programs running at once (the container's pids limit first) */
#define AGENT_ARGS 4096     /* argv + environment entries of one request */
#define AGENT_SOCKET_CHILDREN 64 /* socket requests being served at once */

struct program {
    pid_t pid;
    int sock; /* -1 once trissh closed it (the program was killed) */
    char line[16]; /* a request whose newline has not arrived yet */
    size_t line_length; /* sizeof line: too long, ignored up to its newline */
};

static struct program programs[AGENT_PROGRAMS];
static int program_count = 0;
static pid_t socket_children[AGENT_SOCKET_CHILDREN];
static int socket_child_count = 0;

__attribute__((noreturn)) static void idle_forever(void) {
    for (;;) pause();
}

/* trissh is gone: nothing it started may go on; reap them, then just keep the container. */
__attribute__((noreturn)) static void agent_stop(int control) {
    close(control);
    for (int i = 0; i < program_count; i++) {
        kill(programs[i].pid, SIGKILL);
        if (programs[i].sock >= 0) close(programs[i].sock);
    }
    for (int i = 0; i < socket_child_count; i++) kill(socket_children[i], SIGKILL);
    while (waitpid(-1, NULL, 0) > 0 || errno == EINTR) {}
    idle_forever();
}

static void close_all(const int *fds, size_t count) {
    for (size_t i = 0; i < count; i++) close(fds[i]);
}

/* Open a pty of rows x cols; its slave in *slave. Returns the master, or -1 with errno. */
static int open_pty(unsigned rows, unsigned cols, int *slave) {
    int master = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (master < 0) return -1;
    struct winsize size = {.ws_row = (unsigned short)rows, .ws_col = (unsigned short)cols};
    if (grantpt(master) < 0 || unlockpt(master) < 0 ||
        ioctl(master, TIOCSWINSZ, &size) < 0 ||
        (*slave = ioctl(master, TIOCGPTPEER, O_RDWR | O_NOCTTY | O_CLOEXEC)) < 0) {
        int saved = errno;
        close(master);
        errno = saved;
        return -1;
    }
    return master;
}

/* One "spawn" (four descriptors) or "spawnpty" (one) message: argv, then extra
 * environment. A request that cannot be served gets its descriptors closed (EOF before
 * any status line: trissh reports the failure). */
static void agent_spawn(char *message, size_t length, int *fds, int nfds,
                        const sigset_t *mask) {
    static char *args[AGENT_ARGS + 2];
    size_t count = 0, argc = 0;
    int in_env = 0, pty = 0;
    unsigned rows = 0, cols = 0;
    char *end = message + length, *word = NULL;
    if (length == 0 || message[length - 1] != '\0' || program_count == AGENT_PROGRAMS) {
        close_all(fds, (size_t)nfds);
        return;
    }
    if (strcmp(message, "spawn") == 0 && nfds == 4) {
        word = message + sizeof "spawn";
    } else if (strcmp(message, "spawnpty") == 0 && nfds == 1) {
        pty = 1;
        word = message + sizeof "spawnpty";
        /* 0x0 is a size too: OpenSSH's client asks for it when its stdin is no terminal. */
        int sized = word < end && sscanf(word, "%5u", &rows) == 1;
        if (sized) word += strlen(word) + 1;
        sized = sized && word < end && sscanf(word, "%5u", &cols) == 1;
        if (sized) word += strlen(word) + 1;
        if (!sized || rows > 65535 || cols > 65535) word = end;
    } else {
        close_all(fds, (size_t)nfds);
        return;
    }
    while (word < end && count < AGENT_ARGS) {
        size_t size = strlen(word);
        if (size == 0 && !in_env) {
            in_env = 1;
            argc = count;
            args[count++] = NULL;
        } else {
            args[count++] = word;
        }
        word += size + 1;
    }
    if (!in_env || argc == 0 || word < end) { /* malformed or too many */
        close_all(fds, (size_t)nfds);
        return;
    }
    args[count] = NULL;
    int sock = fds[nfds - 1], stdio[3] = {-1, -1, -1}, master = -1;
    if (pty) {
        master = open_pty(rows, cols, &stdio[0]);
        if (master < 0) {
            dprintf(sock, "error: cannot open a pty: %s\n", strerror(errno));
            close(sock);
            return;
        }
        stdio[1] = stdio[2] = stdio[0];
    } else {
        memcpy(stdio, fds, sizeof stdio);
    }
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        dprintf(pty ? sock : stdio[2], "trissh-exec: fork: %s\n", strerror(errno));
        if (pty) {
            close(master);
            close(stdio[0]);
            close(sock);
        } else {
            close_all(fds, 4);
        }
        return;
    }
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) _exit(137);
        sigprocmask(SIG_SETMASK, mask, NULL);
        signal(SIGPIPE, SIG_DFL); /* the agent ignores it; an ignored signal survives exec */
        setsid();
        for (int i = 0; i < 3; i++) {
            if (dup2(stdio[i], i) < 0) _exit(126);
        }
        if (pty && ioctl(0, TIOCSCTTY, 0) < 0) _exit(126);
        for (size_t i = argc + 1; i < count; i++) {
            if (strchr(args[i], '=') != NULL) putenv(args[i]);
        }
        execvp(args[0], args);
        int code = errno == ENOENT ? 127 : 126;
        dprintf(2, "%s: %s\n", args[0], strerror(errno));
        _exit(code);
    }
    if (pty) {
        close(stdio[0]); /* only the program holds the slave: its exit is EIO on the master */
        if (send_fd(sock, 'p', master) < 0) kill(pid, SIGKILL); /* "p": the master */
        close(master);
    } else {
        close_all(fds, 3);
    }
    programs[program_count].pid = pid;
    programs[program_count].sock = sock;
    programs[program_count].line_length = 0;
    program_count++;
}

/* Requests on one program's socket, a line each: "kill N". Several may come in one read
 * (signals queued back to back), and one may be split across reads. EOF means kill it,
 * trissh is done with it. */
static void agent_program_message(struct program *program) {
    char data[256];
    ssize_t n = recv(program->sock, data, sizeof data, MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
    if (n <= 0) {
        kill(program->pid, SIGKILL);
        close(program->sock);
        program->sock = -1;
        return;
    }
    for (ssize_t i = 0; i < n; i++) {
        if (data[i] != '\n') {
            if (program->line_length < sizeof program->line - 1) {
                program->line[program->line_length++] = data[i];
            } else {
                program->line_length = sizeof program->line;
            }
            continue;
        }
        int number = 0;
        if (program->line_length < sizeof program->line) {
            program->line[program->line_length] = '\0';
            if (sscanf(program->line, "kill %d", &number) != 1) number = 0;
        }
        program->line_length = 0;
        if (number > 0 && number < 65) {
            /* The program's process group, as sshd's killpg: a shell waiting for its child
             * must not hold the signal back until the child ends. (setsid makes pid its id;
             * a child that has not got that far yet is alone: signal it.) */
            if (kill(-program->pid, number) < 0 && errno == ESRCH) kill(program->pid, number);
        }
    }
}

/* Reap what ended; each program's status goes to its socket, then the socket closes. */
static void agent_reap(void) {
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        for (int i = 0; i < program_count; i++) {
            if (programs[i].pid != pid) continue;
            if (programs[i].sock >= 0) report_status(programs[i].sock, status);
            programs[i] = programs[--program_count];
            break;
        }
        for (int i = 0; i < socket_child_count; i++) {
            if (socket_children[i] != pid) continue;
            socket_children[i] = socket_children[--socket_child_count];
            break;
        }
    }
}

/* One socket request (agent-sockets.c), served by a child: it answers on `line` and exits.
 * The child keeps none of the agent's other descriptors. */
static void agent_socket(char *message, size_t length, int line, int control, int children) {
    if (socket_child_count == AGENT_SOCKET_CHILDREN) {
        dprintf(line, "error: failed: too many socket requests at once\n");
        close(line);
        return;
    }
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        dprintf(line, "error: failed: fork: %s\n", strerror(errno));
        close(line);
        return;
    }
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) _exit(1);
        close(control);
        close(children);
        for (int i = 0; i < program_count; i++)
            if (programs[i].sock >= 0) close(programs[i].sock);
        _exit(socket_request(message, length, line));
    }
    close(line);
    socket_children[socket_child_count++] = pid;
}

/* Podman puts HOSTNAME=<hostname> into the main process's environment only; a program
 * started by `podman exec` never sees it. Drop it when it is podman's (an image may set
 * its own), so a session sees the same environment whichever way it started. */
static void drop_podman_hostname(void) {
    char name[256];
    const char *value = getenv("HOSTNAME");
    if (value != NULL && gethostname(name, sizeof name) == 0 && strcmp(value, name) == 0)
        unsetenv("HOSTNAME");
}

static int agent(const char *path, const char *token) {
    /* The session's programs run as our user: without this they could ptrace us, or take
     * a pty master we send trissh (pidfd_getfd) and clear its O_NONBLOCK, so that trissh's
     * read of it blocks the whole server. Our socket children inherit it; exec resets it
     * for the programs. */
    if (prctl(PR_SET_DUMPABLE, 0) != 0) {
        dprintf(2, "trissh-exec: cannot make the agent undumpable: %s\n", strerror(errno));
        return 1;
    }
    drop_podman_hostname();
    int control = connect_with_token(path, token, SOCK_SEQPACKET);
    if (control < 0) {
        dprintf(2, "trissh-exec: no agent connection to trissh (%s): %s\n", path,
                strerror(errno));
        idle_forever();
    }
    struct timeval forever = {0, 0};
    setsockopt(control, SOL_SOCKET, SO_RCVTIMEO, &forever, sizeof forever);
    sigset_t child, old;
    sigemptyset(&child);
    sigaddset(&child, SIGCHLD);
    sigprocmask(SIG_BLOCK, &child, &old);
    int children = signalfd(-1, &child, SFD_CLOEXEC | SFD_NONBLOCK);
    if (children < 0) agent_stop(control);
    signal(SIGPIPE, SIG_IGN);
    static char message[AGENT_MESSAGE];
    static struct pollfd watched[AGENT_PROGRAMS + 2];
    for (;;) {
        watched[0] = (struct pollfd){.fd = control, .events = POLLIN};
        watched[1] = (struct pollfd){.fd = children, .events = POLLIN};
        int count = 2;
        for (int i = 0; i < program_count; i++) {
            watched[count++] = (struct pollfd){.fd = programs[i].sock, .events = POLLIN};
        }
        if (poll(watched, (nfds_t)count, -1) < 0) {
            if (errno == EINTR) continue;
            agent_stop(control);
        }
        if (watched[1].revents) {
            struct signalfd_siginfo info;
            while (read(children, &info, sizeof info) > 0) {}
            agent_reap();
        }
        /* Programs' sockets by pid: reaping above may have reordered the table. */
        for (int i = 2; i < count; i++) {
            if (!watched[i].revents || watched[i].fd < 0) continue;
            for (int j = 0; j < program_count; j++) {
                if (programs[j].sock == watched[i].fd) {
                    agent_program_message(&programs[j]);
                    break;
                }
            }
        }
        if (watched[0].revents) {
            union {
                struct cmsghdr header;
                char space[CMSG_SPACE(4 * sizeof(int))];
            } control_data;
            memset(&control_data, 0, sizeof control_data);
            struct iovec part = {.iov_base = message, .iov_len = sizeof message};
            struct msghdr request = {.msg_iov = &part, .msg_iovlen = 1,
                                     .msg_control = control_data.space,
                                     .msg_controllen = sizeof control_data.space};
            ssize_t n = recvmsg(control, &request, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
            if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
            if (n <= 0) agent_stop(control);
            struct cmsghdr *header = CMSG_FIRSTHDR(&request);
            int got = 0, fds[4];
            if (header != NULL && header->cmsg_level == SOL_SOCKET &&
                header->cmsg_type == SCM_RIGHTS) {
                got = (int)((header->cmsg_len - CMSG_LEN(0)) / sizeof(int));
                if (got > 4) got = 4; /* cannot be (the buffer holds 4), but never overflow */
                memcpy(fds, CMSG_DATA(header), (size_t)got * sizeof(int));
            }
            if (got == 0 || (request.msg_flags & (MSG_TRUNC | MSG_CTRUNC))) {
                close_all(fds, (size_t)got);
                continue;
            }
            if (is_socket_request(message, (size_t)n)) {
                if (got == 1) agent_socket(message, (size_t)n, fds[0], control, children);
                else close_all(fds, (size_t)got);
                continue;
            }
            agent_spawn(message, (size_t)n, fds, got, &old);
        }
    }
    return 0; /* not reached */
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "--read-status") == 0) return read_status(argv[2]);
    if (argc == 4 && strcmp(argv[1], "--agent") == 0) return agent(argv[2], argv[3]);
    if (argc < 5 || strcmp(argv[1], "--status") != 0) return usage();
    const char *status_path = argv[2];
    const char *stdio_path = NULL, *stdio_token = NULL;
    int next = 3;
    if (argc >= 8 && strcmp(argv[3], "--stdio") == 0) {
        stdio_path = argv[4];
        stdio_token = argv[5];
        next = 6;
    }
    if (strcmp(argv[next], "--") != 0 || argv[next + 1] == NULL) return usage();
    char **program = &argv[next + 1];

    int stdio[3] = {-1, -1, -1};
    int status_sock = -1;
    if (stdio_path != NULL &&
        (status_sock = receive_stdio(stdio_path, stdio_token, stdio)) < 0) {
        dprintf(2, "trissh-exec: no stdio from trissh (%s): %s\n", stdio_path, strerror(errno));
        return 126;
    }

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
        if (stdio[0] >= 0) { /* dup2 clears close-on-exec on 0..2; the originals close at exec */
            for (int i = 0; i < 3; i++) {
                if (dup2(stdio[i], i) < 0) _exit(126);
            }
        }
        execvp(program[0], program);
        int code = errno == ENOENT ? 127 : 126;
        dprintf(2, "%s: %s\n", program[0], strerror(errno));
        _exit(code);
    }
    child_pid = pid;
    /* Only PROGRAM (and what it starts) holds the pipes, so its exit is their EOF. */
    for (int i = 0; i < 3; i++) {
        if (stdio[i] >= 0) close(stdio[i]);
    }
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
    if (status_sock >= 0) report_status(status_sock, status);
    if (WIFSIGNALED(status)) {
        write_status(status_path, status);
        return 128 + WTERMSIG(status);
    }
    return WEXITSTATUS(status);
}

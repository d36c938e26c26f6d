/*
 * pfsmount's `pachctl next datum` without a Python interpreter.
 *
 * A shell loop runs `pachctl next datum` once per datum; starting Python for it costs ~45 ms a
 * datum, this ~1 ms. It speaks only the common case: `pachctl next datum [--error MSG]` (with
 * pachctl's global flags -v/--verbose/--no-color) while pfsmount's local worker socket is
 * offered ($PFSMOUNT_WORKER_SOCKET). Everything else -- other commands, --help, flags it does
 * not know, no local socket -- is handed, unchanged, to the Python shim next to this binary
 * (`.pachctl-python`, see pfsmount/shims.py), which owns the full behaviour.
 *
 * The call is pfsmount's local-socket frame (pfsmount/wire.py): a 4-byte big-endian length,
 * kind byte 1 (Pachyderm's semantics: no answer after the last datum), then
 * NextDatumRequest { string error = 1; } with the message's exact bytes. Exit 0 when the next
 * datum is ready, 1 on any error, with the Python shim's messages; after the last datum the
 * worker never answers, so this blocks until the worker ends the process.
 *
 * Built by scripts/setup; run.write_shims falls back to the Python shim when it is missing.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define SOCKET_ENV "PFSMOUNT_WORKER_SOCKET"
#define FALLBACK "/.pachctl-python"
#define ASK_PACHYDERM 1
#define REPLY_OK 0
#define MAX_FRAME (16u * 1024u * 1024u)

static void fallback(char **argv) {
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - sizeof FALLBACK);
    if (n <= 0) {
        fprintf(stderr, "pachctl: cannot find pfsmount's Python shim (/proc/self/exe: %s); "
                "call `pfsmount next-datum` instead\n", strerror(errno));
        exit(1);
    }
    self[n] = '\0';
    char *slash = strrchr(self, '/');
    strcpy(slash ? slash : self, FALLBACK);
    argv[0] = "pachctl";
    execv(self, argv);
    fprintf(stderr, "pachctl: cannot run pfsmount's Python shim %s: %s\n", self, strerror(errno));
    exit(1);
}

static int socket_fail(const char *path, int err) {
    /* The Python shim's wording: "NextDatum failed: pfsmount's worker socket P: [Errno N] S" */
    fprintf(stderr, "pachctl: NextDatum failed: pfsmount's worker socket %s: [Errno %d] %s\n",
            path, err, strerror(err));
    return 1;
}

static int closed_fail(const char *path) {
    fprintf(stderr, "pachctl: NextDatum failed: pfsmount's worker socket %s: "
            "the worker closed the connection (the job is over)\n", path);
    return 1;
}

/* 1 on success, 0 on EOF, -1 on error (errno set). */
static int read_exactly(int fd, unsigned char *buf, size_t n) {
    while (n) {
        ssize_t got = read(fd, buf, n);
        if (got < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        if (got == 0) return 0;
        buf += got;
        n -= (size_t)got;
    }
    return 1;
}

static int write_all(int fd, const unsigned char *buf, size_t n) {
    while (n) {
        ssize_t put = write(fd, buf, n);
        if (put < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        buf += put;
        n -= (size_t)put;
    }
    return 0;
}

static size_t put_varint(unsigned char *out, uint64_t value) {
    size_t i = 0;
    while (value > 0x7f) {
        out[i++] = (unsigned char)((value & 0x7f) | 0x80);
        value >>= 7;
    }
    out[i++] = (unsigned char)value;
    return i;
}

static int next_datum(const char *path, const char *error) {
    size_t error_len = strlen(error);
    if (error_len > MAX_FRAME - 32) {
        fprintf(stderr, "pachctl: the --error message is %zu bytes; at most %u fit\n",
                error_len, MAX_FRAME - 32);
        return 1;
    }
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof addr.sun_path) return socket_fail(path, ENAMETOOLONG);
    strcpy(addr.sun_path, path);

    /* The frame: length, kind, then field 1 (tag 0x0a) when there is an error to report. */
    unsigned char *msg = malloc(error_len + 32);
    if (!msg) return socket_fail(path, ENOMEM);
    size_t body = 5;
    if (error_len) {
        msg[body++] = 0x0a;
        body += put_varint(msg + body, error_len);
        memcpy(msg + body, error, error_len);
        body += error_len;
    }
    uint32_t length = (uint32_t)(body - 4);
    msg[0] = (unsigned char)(length >> 24);
    msg[1] = (unsigned char)(length >> 16);
    msg[2] = (unsigned char)(length >> 8);
    msg[3] = (unsigned char)length;
    msg[4] = ASK_PACHYDERM;

    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return socket_fail(path, errno);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) return socket_fail(path, errno);
    if (write_all(fd, msg, body) < 0) return socket_fail(path, errno);
    free(msg);

    unsigned char header[5];
    int got = read_exactly(fd, header, sizeof header);
    if (got < 0) return socket_fail(path, errno);
    if (got == 0) return closed_fail(path);
    uint32_t size = (uint32_t)header[0] << 24 | (uint32_t)header[1] << 16 |
                    (uint32_t)header[2] << 8 | header[3];
    if (size < 1 || size > MAX_FRAME) {
        fprintf(stderr, "pachctl: NextDatum failed: pfsmount's worker socket %s: "
                "frame of %u bytes is not valid\n", path, size);
        return 1;
    }
    if (header[4] == REPLY_OK) return 0; /* the env is in /pfs/.env; pachctl ignores it */
    /* A refusal or "job over": its payload is the message for people. */
    size_t n = size - 1;
    unsigned char *text = malloc(n + 1);
    if (!text) return socket_fail(path, ENOMEM);
    got = read_exactly(fd, text, n);
    if (got < 0) return socket_fail(path, errno);
    if (got == 0) return closed_fail(path);
    text[n] = '\0';
    fprintf(stderr, "pachctl: NextDatum failed: %s\n", (char *)text);
    return 1;
}

int main(int argc, char **argv) {
    const char *error = "";
    const char *words[2];
    int nwords = 0;
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (!strcmp(arg, "-v") || !strcmp(arg, "--verbose") || !strcmp(arg, "--no-color"))
            continue;
        if (!strcmp(arg, "--error")) {
            /* argparse would take a value starting with '-' for an option: let it decide. */
            if (i + 1 >= argc || argv[i + 1][0] == '-') fallback(argv);
            error = argv[++i];
        } else if (!strncmp(arg, "--error=", 8)) {
            error = arg + 8;
        } else if (arg[0] == '-' || nwords == 2) {
            fallback(argv);
        } else {
            words[nwords++] = arg;
        }
    }
    if (nwords != 2 || strcmp(words[0], "next") || strcmp(words[1], "datum")) fallback(argv);
    const char *path = getenv(SOCKET_ENV);
    if (!path || !*path) fallback(argv); /* gRPC only: the Python shim dials it */
    return next_datum(path, error);
}

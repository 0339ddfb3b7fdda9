/* uconnect SOCKET COMMAND [ARG...]: connects to a Unix stream socket and runs
 * COMMAND with the connection as its stdin and stdout, so that a shell script
 * can talk to QEMU's QMP socket. The confinement guest's busybox nc has no
 * Unix sockets. Built static with musl-gcc by qemu-tests/confine/image.sh. */
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    struct sockaddr_un addr = { .sun_family = AF_UNIX };
    int fd;

    if (argc < 3) {
        fputs("usage: uconnect SOCKET COMMAND [ARG...]\n", stderr);
        return 2;
    }
    if (strlen(argv[1]) >= sizeof addr.sun_path) {
        fprintf(stderr, "uconnect: socket path too long: %s\n", argv[1]);
        return 2;
    }
    strcpy(addr.sun_path, argv[1]);
    fd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
        perror("uconnect");
        return 1;
    }
    if (dup2(fd, 0) < 0 || dup2(fd, 1) < 0) {
        perror("uconnect: dup2");
        return 1;
    }
    close(fd);
    execvp(argv[2], argv + 2);
    perror("uconnect: exec");
    return 127;
}

/* odirect-cat DEV MISALIGN CHUNK: read the whole block device with O_DIRECT preads of CHUNK bytes
 * into a buffer that starts MISALIGN bytes (a multiple of 512) after a page boundary, and write
 * the bytes to stdout. Built static by xtask for the Xen tier's dom0: tests/xen/pvusb-sg.sh pipes
 * it into sha256sum, so SG lists whose pages are not page-aligned (the largest request then spans
 * 16 pages) are checked against the image. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <linux/fs.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	if (argc != 4) {
		fprintf(stderr, "usage: odirect-cat DEV MISALIGN CHUNK\n");
		return 2;
	}
	long mis = atol(argv[2]), chunk = atol(argv[3]);
	if (mis < 0 || mis % 512 || mis >= 4096 || chunk < 512 || chunk % 512) {
		fprintf(stderr, "odirect-cat: MISALIGN must be 0..3584 and CHUNK >= 512, multiples of 512\n");
		return 2;
	}
	int fd = open(argv[1], O_RDONLY | O_DIRECT);
	if (fd < 0) {
		perror("open");
		return 1;
	}
	unsigned long long size = 0, off = 0;
	if (ioctl(fd, BLKGETSIZE64, &size) != 0) {
		perror("BLKGETSIZE64");
		return 1;
	}
	char *buf;
	if (posix_memalign((void **)&buf, 4096, (size_t)chunk + 4096))
		return 1;
	while (off < size) {
		size_t want = size - off < (unsigned long long)chunk ? size - off : (size_t)chunk;
		ssize_t r = pread(fd, buf + mis, want, (off_t)off);
		if (r <= 0) {
			perror("pread");
			return 1;
		}
		for (ssize_t w = 0; w < r;) {
			ssize_t n = write(1, buf + mis + w, r - w);
			if (n <= 0) {
				perror("write");
				return 1;
			}
			w += n;
		}
		off += (unsigned long long)r;
	}
	return 0;
}

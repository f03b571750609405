/* usbreset DEVNODE: ask Linux to reset a USB device (USBDEVFS_RESET -> usb_reset_device), the
 * same path mass-storage error recovery takes. Built static by xtask for the Xen tier's dom0
 * (tests/xen/pvusb.sh checks that usbdom turns the guest's reset into a real one). */
#include <fcntl.h>
#include <linux/usbdevice_fs.h>
#include <stdio.h>
#include <string.h>
#include <errno.h>
#include <sys/ioctl.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: usbreset /dev/bus/usb/BBB/DDD\n");
		return 2;
	}
	int fd = open(argv[1], O_WRONLY);
	if (fd < 0) {
		fprintf(stderr, "usbreset: %s: %s\n", argv[1], strerror(errno));
		return 1;
	}
	if (ioctl(fd, USBDEVFS_RESET, 0) < 0) {
		fprintf(stderr, "usbreset: USBDEVFS_RESET %s: %s\n", argv[1], strerror(errno));
		close(fd);
		return 1;
	}
	close(fd);
	return 0;
}

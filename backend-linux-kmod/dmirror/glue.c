// SPDX-License-Identifier: GPL-2.0
/*
 * The C half of rust_dmirror (dmirror_main.rs): what Linux 6.12 gives Rust no way to
 * reach. The character devices and their file_operations table (6.12 has no cdev or
 * miscdevice abstraction), each operation a one-line call into Rust; and the static
 * inlines the Rust side needs (the mmap lock, xarray init and error decoding, page
 * copies through kmap_local, pfn_to_page, is_zero_pfn, jiffies). No logic of the
 * device is here.
 *
 * The devices are named as lib/test_hmm.c names its own (/dev/hmm_dmirror0 and 1, the
 * two device-private units), so Linux's tools/testing/selftests/mm/hmm-tests runs
 * unchanged against either module (never both loaded at once).
 */
#include <linux/cdev.h>
#include <linux/device.h>
#include <linux/fs.h>
#include <linux/highmem.h>
#include <linux/hmm.h>
#include <linux/jiffies.h>
#include <linux/mm.h>
#include <linux/mmap_lock.h>
#include <linux/module.h>
#include <linux/pagemap.h>
#include <linux/rmap.h>
#include <linux/xarray.h>

#define RDM_NDEVICES 2

/*
 * The hmm stage's teeth (cargo xtask kmod): with teeth=1 the mirror's invalidate
 * records the sequence but leaves the device's entries in place (a stale translation),
 * and hmm-tests must fail.
 */
static int teeth;
module_param(teeth, int, 0444);
MODULE_PARM_DESC(teeth, "1: invalidate keeps the device's entries (a broken driver, for the tests' teeth)");

int rdm_teeth(void);

int rdm_teeth(void)
{
	return teeth;
}

/* dmirror_main.rs declares `struct hmm_range` itself (6.12's Rust bindings lack it). */
static_assert(sizeof(struct hmm_range) == 64);
static_assert(offsetof(struct hmm_range, notifier_seq) == 8);
static_assert(offsetof(struct hmm_range, hmm_pfns) == 32);
static_assert(offsetof(struct hmm_range, dev_private_owner) == 56);
static_assert(HMM_PFN_VALID == 1UL << 63 && HMM_PFN_WRITE == 1UL << 62 &&
	      HMM_PFN_ERROR == 1UL << 61 && HMM_PFN_ORDER_SHIFT == 56);
static_assert(XA_PRESENT == (__force xa_mark_t)8U);

/* Rust (dmirror_main.rs). */
int rdm_open(unsigned int unit, void **private);
void rdm_release(void *private);
long rdm_ioctl(void *private, unsigned int cmd, unsigned long arg);
int rdm_mmap(struct vm_area_struct *vma, unsigned long start, unsigned long end);

static dev_t rdm_dev;
static struct {
	struct cdev cdev;
	struct device device;
	bool added;
} rdm_devices[RDM_NDEVICES];

static int rdm_fops_open(struct inode *inode, struct file *filp)
{
	return rdm_open(iminor(inode), &filp->private_data);
}

static int rdm_fops_release(struct inode *inode, struct file *filp)
{
	rdm_release(filp->private_data);
	return 0;
}

static long rdm_fops_ioctl(struct file *filp, unsigned int cmd, unsigned long arg)
{
	return rdm_ioctl(filp->private_data, cmd, arg);
}

static int rdm_fops_mmap(struct file *filp, struct vm_area_struct *vma)
{
	return rdm_mmap(vma, vma->vm_start, vma->vm_end);
}

static const struct file_operations rdm_fops = {
	.owner = THIS_MODULE,
	.open = rdm_fops_open,
	.release = rdm_fops_release,
	.unlocked_ioctl = rdm_fops_ioctl,
	.mmap = rdm_fops_mmap,
	.llseek = default_llseek,
};

static void rdm_device_release(struct device *dev)
{
	/* Static storage: nothing to free. */
}

void rdm_devices_del(void);

void rdm_devices_del(void)
{
	int i;

	for (i = 0; i < RDM_NDEVICES; i++) {
		if (rdm_devices[i].added)
			cdev_device_del(&rdm_devices[i].cdev, &rdm_devices[i].device);
		if (rdm_devices[i].device.release)
			put_device(&rdm_devices[i].device);
		rdm_devices[i].added = false;
		rdm_devices[i].device.release = NULL;
	}
	if (rdm_dev)
		unregister_chrdev_region(rdm_dev, RDM_NDEVICES);
	rdm_dev = 0;
}

int rdm_devices_add(void);

int rdm_devices_add(void)
{
	int i, ret;

	ret = alloc_chrdev_region(&rdm_dev, 0, RDM_NDEVICES, "RUST_HMM_DMIRROR");
	if (ret)
		return ret;
	for (i = 0; i < RDM_NDEVICES; i++) {
		cdev_init(&rdm_devices[i].cdev, &rdm_fops);
		rdm_devices[i].cdev.owner = THIS_MODULE;
		device_initialize(&rdm_devices[i].device);
		rdm_devices[i].device.release = rdm_device_release;
		rdm_devices[i].device.devt = MKDEV(MAJOR(rdm_dev), i);
		ret = dev_set_name(&rdm_devices[i].device, "hmm_dmirror%u", i);
		if (!ret)
			ret = cdev_device_add(&rdm_devices[i].cdev, &rdm_devices[i].device);
		if (ret) {
			rdm_devices_del();
			return ret;
		}
		rdm_devices[i].added = true;
	}
	return 0;
}

/* The static inlines. */
void rdm_mmap_read_lock(struct mm_struct *mm);
void rdm_mmap_read_unlock(struct mm_struct *mm);
void rdm_xa_init(struct xarray *xa);
int rdm_xa_err(void *entry);
struct page *rdm_pfn_to_page(unsigned long pfn);
bool rdm_is_zero_pfn(unsigned long pfn);
void rdm_memcpy_from_page(char *to, struct page *page);
void rdm_memcpy_to_page(struct page *page, const char *from);
void rdm_unlock_put_page(struct page *page);
void rdm_get_page(struct page *page);
unsigned long rdm_deadline(unsigned int ms);
bool rdm_past(unsigned long deadline);

void rdm_mmap_read_lock(struct mm_struct *mm)
{
	mmap_read_lock(mm);
}

void rdm_mmap_read_unlock(struct mm_struct *mm)
{
	mmap_read_unlock(mm);
}

void rdm_xa_init(struct xarray *xa)
{
	xa_init(xa);
}

int rdm_xa_err(void *entry)
{
	return xa_err(entry);
}

struct page *rdm_pfn_to_page(unsigned long pfn)
{
	return pfn_to_page(pfn);
}

bool rdm_is_zero_pfn(unsigned long pfn)
{
	return is_zero_pfn(pfn);
}

void rdm_memcpy_from_page(char *to, struct page *page)
{
	memcpy_from_page(to, page, 0, PAGE_SIZE);
}

void rdm_memcpy_to_page(struct page *page, const char *from)
{
	memcpy_to_page(page, 0, from, PAGE_SIZE);
}

void rdm_unlock_put_page(struct page *page)
{
	unlock_page(page);
	put_page(page);
}

void rdm_get_page(struct page *page)
{
	get_page(page);
}

unsigned long rdm_deadline(unsigned int ms)
{
	return jiffies + msecs_to_jiffies(ms);
}

bool rdm_past(unsigned long deadline)
{
	return time_after(jiffies, deadline);
}

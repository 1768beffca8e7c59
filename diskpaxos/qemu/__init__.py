"""QEMU front end: leases for a VM's disks, named as libvirt's sanlock driver names them, held by the QEMU process itself."""

"""``vm status``: the VMs this host's daemon holds leases for, their disks, leases and versions."""

from __future__ import annotations

import json
from typing import Any

from ..client import Client
from ..lease_strings import parse_resource
from .vm import INFO_KIND


def vm_status(client: Client) -> dict[str, Any]:
    """VMs (registered by ``vm run``) with each disk's lease, mode and lver as the daemon holds them."""
    status = client.status()
    vms = []
    for c in status["clients"]:
        try:
            info = json.loads(c.get("info") or "{}")
        except ValueError:
            continue
        if info.get("kind") != INFO_KIND:
            continue
        held = {}
        for text in c["leases"]:
            res = parse_resource(text)
            held[(res.lockspace, res.name, res.path, res.offset)] = res
        disks = []
        for d in info.get("disks", []):
            entry = {"path": d["path"], "readonly": d["readonly"], "shared": d["shared"], "lease": None,
                     "mode": "none (read-only)" if d["readonly"] else "none", "lver": None, "held": False}
            if d.get("lease"):
                want = parse_resource(d["lease"])
                res = held.pop((want.lockspace, want.name, want.path, want.offset), None)
                entry.update(lease=f"{want.lockspace}:{want.name}", mode="shared" if want.shared else "exclusive",
                             held=res is not None, lver=None if res is None else res.lver)
            disks.append(entry)
        others = [{"lease": f"{r.lockspace}:{r.name}:{r.path}:{r.offset}", "shared": r.shared, "lver": r.lver}
                  for r in held.values()]
        vms.append({"name": info.get("name", c.get("name", "")), "pid": c["pid"], "incoming": info.get("incoming"),
                    "fencing": c["fencing"], "disks": disks, "leases": others})
    return {"lockspaces": status["lockspaces"], "vms": vms}


def format_status(status: dict[str, Any]) -> list[str]:
    lines = []
    for ls in status["lockspaces"]:
        lines.append(f"lockspace {ls['lockspace']} host ID {ls['host_id']} generation {ls['generation']} "
                     f"{ls['state']}")
    if not status["vms"]:
        lines.append("no VMs")
    for vm in status["vms"]:
        state = " (incoming migration, holds no lease yet)" if vm["incoming"] and not any(
            d["held"] for d in vm["disks"]) and not vm["leases"] else ""
        lines.append(f"VM '{vm['name']}' pid {vm['pid']}{state}{' FENCING' if vm['fencing'] else ''}")
        for d in vm["disks"]:
            if d["lease"] is None:
                lines.append(f"  disk {d['path']}: no lease ({d['mode']})")
            else:
                held = f"held, lver {d['lver']}" if d["held"] else "not held"
                lines.append(f"  disk {d['path']}: {d['mode']} lease {d['lease']} {held}")
        for lease in vm["leases"]:
            mode = "shared" if lease["shared"] else f"exclusive, lver {lease['lver']}"
            lines.append(f"  lease {lease['lease']} ({mode})")
    return lines


__all__ = ["vm_status", "format_status"]

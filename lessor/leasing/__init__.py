"""Leasing: Lua-scripted fenced leases, batched heartbeats, the reaper, self-fencing."""

from lessor.leasing.backend import Backend, open_backend
from lessor.leasing.client import Lease, LeaseClient
from lessor.leasing.codes import Code
from lessor.leasing.config import LeaseConfig
from lessor.leasing.eventlog import EventLog
from lessor.leasing.keeper import FenceReason, LeaseKeeper
from lessor.leasing.reaper import Reaper

__all__ = ["Backend", "Code", "EventLog", "FenceReason", "Lease", "LeaseClient", "LeaseConfig",
           "LeaseKeeper", "Reaper", "open_backend"]

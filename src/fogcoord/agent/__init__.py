"""The device agent: ``fogcoord agent`` on a real machine, ``fogcoord fleet`` for simulated ones.

It talks to the coordinator only over HTTP and the device's WebSocket channel (through
:mod:`fogcoord.client` and :mod:`fogcoord.api.schemas`), never by importing the services.
"""

from fogcoord.agent.backoff import Backoff
from fogcoord.agent.device import DeviceSource, DeviceSpec, MachineDevice
from fogcoord.agent.fleet import Fleet, FleetProgress, FleetReport
from fogcoord.agent.handlers import Handler, Handlers, Message
from fogcoord.agent.identity import DeviceIdentity, FileIdentityStore, MemoryIdentityStore
from fogcoord.agent.runner import Agent, AgentError, channel_url, default_state_dir
from fogcoord.agent.simulated import SimulatedDevice, simulated_fleet
from fogcoord.agent.telemetry import FleetStats, NullRecorder, Percentiles, Recorder

__all__ = [
    "Agent",
    "AgentError",
    "Backoff",
    "DeviceIdentity",
    "DeviceSource",
    "DeviceSpec",
    "FileIdentityStore",
    "Fleet",
    "FleetProgress",
    "FleetReport",
    "FleetStats",
    "Handler",
    "Handlers",
    "MachineDevice",
    "MemoryIdentityStore",
    "Message",
    "NullRecorder",
    "Percentiles",
    "Recorder",
    "SimulatedDevice",
    "channel_url",
    "default_state_dir",
    "simulated_fleet",
]

"""`hlgfa bridge`: the camera daemons' decisions and health on the line's own protocols.

core.py      one thread per camera daemon (acknowledged decisions, heartbeats), fan-out to adapters
health.py    when a camera is healthy, as every protocol shows it (the system's signal)
handshake.py the PLC's part ids as jobs to the daemon, and the results it acknowledges
registers.py the Modbus register map
modbus.py, mqtt.py, opcua.py   the protocols (each imports its library only when used); third_party/ holds
             the OPC 40100-1 Machine Vision NodeSet opcua.py loads, unmodified, with its licence
cli.py       the command and its config file
docs/PLC.md is the integrator's guide.
"""

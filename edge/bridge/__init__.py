"""`hlgfa bridge`: the camera daemons' decisions and health on the line's own protocols.

core.py      one thread per camera daemon (acknowledged decisions, heartbeats), fan-out to adapters
health.py    when a camera is healthy, as every protocol shows it
registers.py the Modbus register map
modbus.py, mqtt.py, opcua.py   the protocols (each imports its library only when used)
cli.py       the command and its config file
docs/PLC.md is the integrator's guide.
"""

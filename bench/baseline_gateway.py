#!/usr/bin/env python3
"""The gateway users write by hand, written well: pyserial ports read in chunks (not readline())
through one select() loop, lines split and parsed as key=value, each field published with paho-mqtt
(QoS 0, network loop on its own thread) to a Mosquitto broker. The baseline of bench/board.sh.

Usage: baseline_gateway.py HOST PORT DEVICE...
"""
import select
import sys

import paho.mqtt.client as mqtt
import serial


def main():
    host, port, devices = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="baseline")
    client.connect(host, port)
    client.loop_start()
    ports = {}
    for i, dev in enumerate(devices):
        s = serial.Serial(dev, 115200, timeout=0)
        ports[s.fileno()] = (s, f"p{i}", bytearray())
    while True:
        ready, _, _ = select.select(list(ports), [], [])
        for fd in ready:
            s, name, buf = ports[fd]
            chunk = s.read(4096)
            if not chunk:
                continue
            buf.extend(chunk)
            while True:
                end = buf.find(b"\r\n")
                if end < 0:
                    break
                line = bytes(buf[:end])
                del buf[: end + 2]
                for pair in line.split(b","):
                    key, sep, value = pair.partition(b"=")
                    if sep:
                        client.publish(f"bench/{name}/{key.decode()}", value, qos=0)


if __name__ == "__main__":
    main()

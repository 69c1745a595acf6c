"""The event/delivery runtime on NATS JetStream: server, connection, topology, consumer loop."""

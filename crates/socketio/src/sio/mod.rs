//! Socket.IO v5: namespaces, events and acknowledgements over Engine.IO messages.

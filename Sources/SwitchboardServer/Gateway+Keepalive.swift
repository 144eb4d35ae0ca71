import NIOCore
import ServiceLifecycle
import SwitchboardRegistry

/// Pings quiet clients and closes silent ones (RFC 6455 ping/pong), with one sweep over
/// all sessions every ping interval rather than a timer per connection, so an idle
/// connection costs no scheduled task.
struct GatewayKeepaliveService: Service {
    let gateway: Gateway

    init(gateway: Gateway) {
        self.gateway = gateway
    }

    func run() async throws {
        let interval = gateway.configuration.pingInterval / 2
        await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                do { try await Task.sleep(for: interval) } catch { return }
                let now = NIODeadline.now()
                for handle in gateway.registry.allHandles() {
                    handle.withSession { $0.keepalive(now: now) }
                }
            }
        }
    }
}

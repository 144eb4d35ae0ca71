public import Hummingbird
import HummingbirdCore
public import Logging
public import NIOCore
public import SwitchboardBackplane

/// Assembles a runnable gateway: the HTTP routes, the `/ws` upgrade, and the backplane
/// as a service that starts before the server and stops after it.
///
/// `switchboard serve` and the tests both build gateways through this function.
/// - Parameters:
///   - configuration: The gateway's settings.
///   - backplane: The backplane; the gateway installs itself as its delivery handler.
///   - logger: The root logger; the gateway adds its id to every line.
///   - onServerRunning: Called with the listening channel once the server accepts connections.
/// - Returns: The application (run it with `runService()` or in a `ServiceGroup`) and the gateway.
public func buildGateway(
    configuration: GatewayConfiguration,
    backplane: any Backplane,
    logger: Logger,
    onServerRunning: @escaping @Sendable (any Channel) async -> Void = { _ in }
) -> (application: some ApplicationProtocol, gateway: Gateway) {
    let gateway = Gateway(configuration: configuration, backplane: backplane, logger: logger)
    let router = Router()
    Routes.add(to: router, gateway: gateway)
    let application = Application(
        router: router,
        server: HTTPServerBuilder { responder in
            GatewayChildChannel(responder: responder, gateway: gateway)
        },
        configuration: ApplicationConfiguration(
            address: .hostname(configuration.host, port: configuration.port),
            serverName: nil,
            backlog: configuration.listenBacklog
        ),
        services: [backplane, GatewayKeepaliveService(gateway: gateway)],
        onServerRunning: onServerRunning,
        logger: gateway.logger
    )
    return (application, gateway)
}

import Hummingbird
import HummingbirdCore
public import Logging
public import NIOCore
public import ServiceLifecycle
public import SwitchboardBackplane

/// Assembles a runnable gateway: the HTTP routes, the `/ws` upgrade, the backplane as a
/// service that starts before the server and stops after it, and the drain
/// (``Gateway/drain()``) that runs first on graceful shutdown.
///
/// `switchboard serve` and the tests both build gateways through this function.
/// - Parameters:
///   - configuration: The gateway's settings.
///   - backplane: The backplane; the gateway installs itself as its delivery handler.
///   - logger: The root logger; the gateway adds its id to every line.
///   - onServerRunning: Called with the listening channel once the server accepts connections.
/// - Returns: The application, a service to run in a `ServiceGroup` (whose graceful
///   shutdown drains the gateway, then stops the server and the backplane), and the gateway.
public func buildGateway(
    configuration: GatewayConfiguration,
    backplane: any Backplane,
    logger: Logger,
    onServerRunning: @escaping @Sendable (any Channel) async -> Void = { _ in }
) -> (application: some Service, gateway: Gateway) {
    let gateway = Gateway(configuration: configuration, backplane: backplane, logger: logger)
    var services: [any Service] = [backplane]
    if let history = configuration.history { services.append(history) }
    if let presence = gateway.presence {
        services.append(presence.store)
        services.append(PresenceRefreshService(tracker: presence))
    }
    services.append(GatewayKeepaliveService(gateway: gateway))
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
        services: services,
        onServerRunning: onServerRunning,
        logger: gateway.logger
    )
    // Not one of the application's own services: Hummingbird appends its server after
    // them, and a group shuts down in reverse order, so the server would stop before the
    // drain began. In a group of their own the drain (last) shuts down first, and the
    // application (the server, then the backplane) once it is done.
    let group = ServiceGroup(
        configuration: .init(services: [application, GatewayDrainService(gateway: gateway)], logger: gateway.logger)
    )
    return (group, gateway)
}

import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL

/// Why an HTTPS GET (a JWKS fetch) failed; `description` never contains the response body.
enum HTTPSGetError: Error, CustomStringConvertible {
    /// Not an `https://` URL with a host (plain `http://` is refused on purpose).
    case invalidURL(String)
    /// The trust roots (`--jwks-ca-file`) could not be loaded.
    case tlsConfiguration(any Error)
    /// TCP connect, TLS handshake (certificate or host name verification) or the exchange failed.
    case transport(any Error)
    /// No complete response within the time limit.
    case timedOut(Duration)
    /// The server answered something other than 200.
    case status(Int)
    /// The body (or its declared length) exceeded the limit.
    case tooLarge(limit: Int)
    /// The connection closed before the response was complete.
    case incompleteResponse

    var description: String {
        switch self {
        case .invalidURL(let reason): "invalid URL: \(reason)"
        case .tlsConfiguration(let error): "TLS configuration: \(error)"
        case .transport(let error): "connection failed: \(error)"
        case .timedOut(let limit): "no complete response within \(limit)"
        case .status(let code): "HTTP status \(code)"
        case .tooLarge(let limit): "response larger than \(limit) bytes"
        case .incompleteResponse: "the connection closed before the response was complete"
        }
    }
}

/// A one-shot HTTPS GET over SwiftNIO, NIOSSL and NIOHTTP1, for fetching a JWKS document.
///
/// Deliberately small: no redirects (a moved key set is an operator's decision), no
/// cookies, no proxies, one request per connection. The certificate chain and the host
/// name (or IP address) are always verified; the overall time and the body size are capped.
struct HTTPSGet: Sendable {
    let url: URL
    private let host: String
    private let port: Int
    private let requestTarget: String
    private let sslContext: NIOSSLContext
    var timeout: Duration
    var maximumBodyBytes: Int

    /// - Parameters:
    ///   - caFile: PEM file of the CAs to trust; nil: the system trust store.
    /// - Throws: `.invalidURL` for anything but `https://host[:port]/path`, `.tlsConfiguration` when `caFile` cannot be used.
    init(url: URL, caFile: String? = nil, timeout: Duration = .seconds(5), maximumBodyBytes: Int = 1 << 20) throws(HTTPSGetError) {
        guard let components = URLComponents(url: url, resolvingAgainstBaseURL: false) else {
            throw .invalidURL("cannot parse it")
        }
        guard components.scheme?.lowercased() == "https" else {
            throw .invalidURL("only https:// is allowed (a key set fetched over plain HTTP could be replaced by anyone on the path)")
        }
        guard var host = components.host, !host.isEmpty else { throw .invalidURL("no host") }
        guard components.user == nil, components.password == nil else { throw .invalidURL("credentials in the URL are not supported") }
        if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        let port = components.port ?? 443
        guard (1...65535).contains(port) else { throw .invalidURL("port \(port) is out of range") }
        var target = components.percentEncodedPath.isEmpty ? "/" : components.percentEncodedPath
        if let query = components.percentEncodedQuery { target += "?" + query }

        var tls = TLSConfiguration.makeClientConfiguration()
        tls.minimumTLSVersion = .tlsv12
        tls.certificateVerification = .fullVerification
        do {
            if let caFile {
                tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(caFile))
            }
            sslContext = try NIOSSLContext(configuration: tls)
        } catch {
            throw .tlsConfiguration(error)
        }
        self.url = url
        self.host = host
        self.port = port
        self.requestTarget = target
        self.timeout = timeout
        self.maximumBodyBytes = maximumBodyBytes
    }

    /// The URL without query or fragment, for logs (a query could carry an access token).
    var redactedURL: String {
        var components = URLComponents(url: url, resolvingAgainstBaseURL: false)
        components?.query = nil
        components?.fragment = nil
        return components?.string ?? "https://\(host)"
    }

    /// Fetches the body. Never blocks an event loop: connect, handshake and reading are NIO futures.
    func fetch() async throws(HTTPSGetError) -> [UInt8] {
        let eventLoop = MultiThreadedEventLoopGroup.singleton.next()
        let promise = eventLoop.makePromise(of: [UInt8].self)
        // One deadline for connect, TLS handshake, request and response together.
        let deadline = eventLoop.scheduleTask(in: TimeAmount(timeout)) {
            promise.fail(HTTPSGetError.timedOut(timeout))
        }
        // SNI and host-name verification take a name; an IP address literal is instead
        // checked against the certificate's IP SANs (NIOSSL does that when the name is nil).
        let serverHostname: String? = Self.isIPAddress(host) ? nil : host
        let sslContext = self.sslContext
        let limit = maximumBodyBytes
        let head = HTTPRequestHead(
            version: .http1_1,
            method: .GET,
            uri: requestTarget,
            headers: [
                "Host": Self.isIPv6(host) ? "[\(host)]:\(port)" : "\(host):\(port)",
                "Accept": "application/json, application/jwk-set+json",
                "User-Agent": "switchboard",
                "Connection": "close",
            ]
        )
        let bootstrap = ClientBootstrap(group: eventLoop)
            .connectTimeout(TimeAmount(timeout))
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let sync = channel.pipeline.syncOperations
                    try sync.addHandler(NIOSSLClientHandler(context: sslContext, serverHostname: serverHostname))
                    try sync.addHTTPClientHandlers()
                    try sync.addHandler(ResponseCollector(promise: promise, maximumBodyBytes: limit))
                }
            }
        bootstrap.connect(host: host, port: port).whenComplete { result in
            switch result {
            case .success(let channel):
                // Closing once the promise is done (either way) also ends a slow server's stream.
                promise.futureResult.whenComplete { _ in channel.close(promise: nil) }
                channel.write(HTTPClientRequestPart.head(head), promise: nil)
                channel.writeAndFlush(HTTPClientRequestPart.end(nil), promise: nil)
            case .failure(let error):
                promise.fail(HTTPSGetError.transport(error))
            }
        }
        do {
            let body = try await promise.futureResult.get()
            deadline.cancel()
            return body
        } catch let error as HTTPSGetError {
            deadline.cancel()
            throw error
        } catch {
            deadline.cancel()
            throw .transport(error)
        }
    }

    static func isIPAddress(_ host: String) -> Bool {
        (try? SocketAddress(ipAddress: host, port: 0)) != nil
    }

    private static func isIPv6(_ host: String) -> Bool { host.contains(":") }
}

/// Collects one HTTP response into the promise: 200 only, body up to the limit.
///
/// Lives on its channel's event loop only (NIO calls handlers there), so its mutable
/// state needs no lock; it is not Sendable and never leaves that loop.
private final class ResponseCollector: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPClientResponsePart

    private let promise: EventLoopPromise<[UInt8]>
    private let maximumBodyBytes: Int
    private var body: [UInt8] = []
    private var done = false

    init(promise: EventLoopPromise<[UInt8]>, maximumBodyBytes: Int) {
        self.promise = promise
        self.maximumBodyBytes = maximumBodyBytes
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !done else { return }
        switch unwrapInboundIn(data) {
        case .head(let head):
            guard head.status == .ok else { return finish(context: context, .failure(HTTPSGetError.status(Int(head.status.code)))) }
            if let length = head.headers.first(name: "content-length").flatMap(Int.init), length > maximumBodyBytes {
                return finish(context: context, .failure(HTTPSGetError.tooLarge(limit: maximumBodyBytes)))
            }
        case .body(let buffer):
            guard body.count + buffer.readableBytes <= maximumBodyBytes else {
                return finish(context: context, .failure(HTTPSGetError.tooLarge(limit: maximumBodyBytes)))
            }
            body.append(contentsOf: buffer.readableBytesView)
        case .end:
            finish(context: context, .success(body))
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        finish(context: context, .failure(HTTPSGetError.transport(error)))
    }

    func channelInactive(context: ChannelHandlerContext) {
        finish(context: context, .failure(HTTPSGetError.incompleteResponse))
        context.fireChannelInactive()
    }

    private func finish(context: ChannelHandlerContext, _ result: Result<[UInt8], any Error>) {
        guard !done else { return }
        done = true
        promise.completeWith(result)
        context.close(promise: nil)
    }
}

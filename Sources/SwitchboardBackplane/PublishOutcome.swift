/// What a backplane can promise about a publish once it has taken it.
public enum PublishOutcome: Sendable, Equatable {
    /// At least one gateway bound to the address got the frame (for RabbitMQ: confirmed and not returned).
    case routed
    /// No gateway is bound to the address; nobody got it.
    case noRecipient
    /// Taken, but this backplane cannot know whether anyone got it (Redis broadcast).
    case unknown
}

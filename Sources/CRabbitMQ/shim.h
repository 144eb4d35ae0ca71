// The C surface of rabbitmq-c that AMQPClient uses, plus what Swift cannot import
// from it directly. Only AMQPClient imports this module.
#ifndef CRABBITMQ_SHIM_H
#define CRABBITMQ_SHIM_H

// rabbitmq-c 0.11 (Debian 12) installs flat headers; 0.12+ use <rabbitmq-c/…>.
#if __has_include(<rabbitmq-c/amqp.h>)
#include <rabbitmq-c/amqp.h>
#include <rabbitmq-c/framing.h>
#include <rabbitmq-c/tcp_socket.h>
#include <rabbitmq-c/ssl_socket.h>
#else
#include <amqp.h>
#include <amqp_framing.h>
#include <amqp_tcp_socket.h>
#include <amqp_ssl_socket.h>
#endif

#include <linux/sockios.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

// amqp_login is C-variadic (the SASL arguments), which Swift cannot call. It logs in with
// the client capability `connection.blocked` (merged into rabbitmq-c's default client
// properties), so that RabbitMQ tells the client when a resource alarm blocks publishing
// instead of silently no longer reading its socket.
static inline amqp_rpc_reply_t crmq_login_plain(amqp_connection_state_t state, const char *vhost, int channel_max,
                                                int frame_max, int heartbeat, const char *user, const char *password) {
    amqp_table_entry_t capability;
    capability.key = amqp_cstring_bytes("connection.blocked");
    capability.value.kind = AMQP_FIELD_KIND_BOOLEAN;
    capability.value.value.boolean = 1;
    amqp_table_entry_t property;
    property.key = amqp_cstring_bytes("capabilities");
    property.value.kind = AMQP_FIELD_KIND_TABLE;
    property.value.value.table.num_entries = 1;
    property.value.value.table.entries = &capability;
    amqp_table_t properties;
    properties.num_entries = 1;
    properties.entries = &property;
    return amqp_login_with_properties(state, vhost, channel_max, frame_max, heartbeat, &properties, AMQP_SASL_METHOD_PLAIN,
                                      user, password);
}

// Bytes written to a TCP socket and not yet acknowledged by the peer (SIOCOUTQ), or -1.
static inline int crmq_unsent_bytes(int fd) {
    int bytes = 0;
    return ioctl(fd, SIOCOUTQ, &bytes) == 0 ? bytes : -1;
}

// The socket's send buffer size (SO_SNDBUF, as the kernel accounts it), or -1.
static inline int crmq_send_buffer_size(int fd) {
    int size = 0;
    socklen_t length = sizeof(size);
    return getsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, &length) == 0 ? size : -1;
}

// Method numbers and property flags are macros with casts or shifts, which Swift does not import.
static const amqp_method_number_t crmq_basic_publish = AMQP_BASIC_PUBLISH_METHOD;
static const amqp_method_number_t crmq_basic_deliver = AMQP_BASIC_DELIVER_METHOD;
static const amqp_method_number_t crmq_basic_consume = AMQP_BASIC_CONSUME_METHOD;
static const amqp_method_number_t crmq_basic_return = AMQP_BASIC_RETURN_METHOD;
static const amqp_method_number_t crmq_basic_ack = AMQP_BASIC_ACK_METHOD;
static const amqp_method_number_t crmq_basic_nack = AMQP_BASIC_NACK_METHOD;
static const amqp_method_number_t crmq_channel_close = AMQP_CHANNEL_CLOSE_METHOD;
static const amqp_method_number_t crmq_connection_close = AMQP_CONNECTION_CLOSE_METHOD;
static const amqp_method_number_t crmq_connection_close_ok = AMQP_CONNECTION_CLOSE_OK_METHOD;
static const amqp_method_number_t crmq_connection_blocked = AMQP_CONNECTION_BLOCKED_METHOD;
static const amqp_method_number_t crmq_connection_unblocked = AMQP_CONNECTION_UNBLOCKED_METHOD;
static const amqp_method_number_t crmq_queue_bind = AMQP_QUEUE_BIND_METHOD;
static const amqp_method_number_t crmq_queue_bind_ok = AMQP_QUEUE_BIND_OK_METHOD;
static const amqp_method_number_t crmq_queue_unbind = AMQP_QUEUE_UNBIND_METHOD;
static const amqp_method_number_t crmq_queue_unbind_ok = AMQP_QUEUE_UNBIND_OK_METHOD;
static const amqp_flags_t crmq_message_id_flag = AMQP_BASIC_MESSAGE_ID_FLAG;
static const amqp_flags_t crmq_content_type_flag = AMQP_BASIC_CONTENT_TYPE_FLAG;
static const amqp_flags_t crmq_delivery_mode_flag = AMQP_BASIC_DELIVERY_MODE_FLAG;
static const uint8_t crmq_frame_method = AMQP_FRAME_METHOD;
static const uint8_t crmq_frame_header = AMQP_FRAME_HEADER;
static const uint8_t crmq_frame_body = AMQP_FRAME_BODY;
static const int crmq_reply_success = AMQP_REPLY_SUCCESS;

#endif

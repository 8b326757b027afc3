//! Kafka headers read byte for byte. rdkafka's `Headers::try_get` turns a name into `&str`
//! with `unwrap`, so a producer that sends a non-UTF-8 header name would panic the receive
//! loop; this reads names and values through librdkafka's C API instead.
#![allow(unsafe_code)]

use rdkafka::bindings as rdsys;
use rdkafka::message::BorrowedMessage;
use rdkafka::types::RDKafkaRespErr;

use crate::message::Header;

/// Every header of `message`, names and values as raw bytes, in order.
pub(super) fn read(message: &BorrowedMessage<'_>) -> Vec<Header> {
    let mut headers: *mut rdsys::rd_kafka_headers_t = std::ptr::null_mut();
    // SAFETY: `message.ptr()` is the live librdkafka message that `message` borrows; the call
    // only writes the message's header list (owned by the message) into `headers`.
    let err = unsafe { rdsys::rd_kafka_message_headers(message.ptr(), &mut headers) };
    if err != RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR || headers.is_null() {
        return Vec::new();
    }
    // SAFETY: `headers` is the non-null list returned above, alive as long as `message`.
    let count = unsafe { rdsys::rd_kafka_header_cnt(headers) };
    let mut out = Vec::with_capacity(count);
    for index in 0..count {
        let mut name: *const std::ffi::c_char = std::ptr::null();
        let mut value: *const std::ffi::c_void = std::ptr::null();
        let mut size: usize = 0;
        // SAFETY: `index < count`; librdkafka writes pointers into the list's own storage,
        // valid while `message` lives, and we copy them out before returning.
        let err = unsafe {
            rdsys::rd_kafka_header_get_all(headers, index, &mut name, &mut value, &mut size)
        };
        if err != RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR || name.is_null() {
            continue;
        }
        // SAFETY: librdkafka stores header names NUL-terminated; `name` is non-null.
        let key = unsafe { std::ffi::CStr::from_ptr(name) }
            .to_bytes()
            .to_vec();
        let value = (!value.is_null()).then(|| {
            // SAFETY: a non-null value points at `size` bytes owned by the header list.
            unsafe { std::slice::from_raw_parts(value.cast::<u8>(), size) }.to_vec()
        });
        out.push(Header { key, value });
    }
    out
}

// Abuser: a busy loop on every request (ended by the CPU limit).
export default {
  fetch(request) {
    if (new URL(request.url).searchParams.has("ok")) return new Response("fine");
    for (;;) {}
  },
};

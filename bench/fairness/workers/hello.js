// The well-behaved neighbour.
export default {
  fetch() {
    return new Response("Hello World!");
  },
};
